"""Class-level trends: which heads a class of images relies on, and how far its patches look.

Pure numpy (store arrays in, rows out) so that `vitscope info STORE --class NAME` and the tests share it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vitscope.errors import VitscopeError
from vitscope.vocab import METRICS, WHOLE_HEAD, head_name


def match_class(text: str, class_names: list[str], present: list[int]) -> tuple[int, list[int]]:
    """(class index, every class with images whose name contains `text`): the exact name, else (any case)
    the first class with an image whose name contains `text`, as the app's class search. No match is one
    line naming the closest names; a class without a readable image is one line too."""
    t = text.strip()
    if not t:
        raise VitscopeError("give a class name (exact, or a part of it in any case)")
    low = [n.lower() for n in class_names]
    contains = [i for i in present if t.lower() in low[i]]
    exact = class_names.index(t) if t in class_names else low.index(t.lower()) if t.lower() in low else None
    if exact is None and contains:
        exact = contains[0]
    if exact is None:
        empty = [n for n in class_names if t.lower() in n.lower()]
        if empty:  # the name is right, the store has no image of it
            names = ", ".join(map(repr, empty[:5])) + (", …" if len(empty) > 5 else "")
            raise VitscopeError(f"no image of a class matching {text!r} in this store ({names} have none); "
                                "pick a class it has images of")
        close = difflib.get_close_matches(t.lower(), low, n=5, cutoff=0.5)
        hint = f"; close: {', '.join(repr(class_names[low.index(c)]) for c in close)}" if close else ""
        raise VitscopeError(f"no class matches {text!r} among the store's {len(class_names)} classes{hint}")
    if exact not in present:
        raise VitscopeError(f"class {class_names[exact]!r} has no readable image in this store")
    return exact, contains


class HeadRow(NamedTuple):
    """One head's effect on a class when pruned whole."""

    layer: int
    head: int
    drop_mean: float  # mean over the class's images of P[true] − P'[true]
    drop_std: float
    jsd_mean: float
    flips: int  # images whose top-1 prediction changes

    @property
    def name(self) -> str:
        return head_name(self.layer, self.head)


class LayerRow(NamedTuple):
    layer: int
    entropy_class: float  # mean strength entropy of the layer's heads over the class's images
    entropy_all: float  # the same over all readable images


@dataclass
class ClassReport:
    cls: int
    images: int
    correct: int  # unpruned top-1 right
    heads: list[HeadRow]  # the most harmful first
    layers: list[LayerRow]

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else float("nan")


def class_report(cls: int, label: np.ndarray, valid: np.ndarray, baseline_prob: np.ndarray,
                 importance: np.ndarray, topk_idx: np.ndarray, strength_entropy: np.ndarray,
                 top: int = 10) -> ClassReport:
    """The class's accuracy, its `top` heads by mean drop of P[true] in mode 1 (± std over its images, mean
    JSD, top-1 changes) and its mean strength entropy per layer beside all images'. Only readable images."""
    mine = np.asarray(valid, bool) & (np.asarray(label) == cls)
    n = int(mine.sum())
    correct = int((topk_idx[mine, 0, 0, 0, 0] == label[mine]).sum())
    imp = importance[mine, :, :, WHOLE_HEAD]  # [n, L, H, metric]
    drop = baseline_prob[mine, None, None] - imp[..., METRICS.index("prob")]  # [n, L, H]
    jsd = imp[..., METRICS.index("jsd")]
    flips = (topk_idx[mine, :, :, WHOLE_HEAD, 0] != topk_idx[mine, :, :, 0, 0]).sum(0)  # [L, H]
    L, H = drop.shape[1:]
    mean, std, jsd_mean = drop.mean(0).ravel(), drop.std(0).ravel(), jsd.mean(0).ravel()
    order = np.lexsort((np.arange(L * H), -mean))[:top]  # largest drop first; ties by head order
    heads = [HeadRow(int(k // H), int(k % H), float(mean[k]), float(std[k]), float(jsd_mean[k]),
                     int(flips.ravel()[k])) for k in order]
    ent_class = strength_entropy[mine].mean((0, 2))
    ent_all = strength_entropy[np.asarray(valid, bool)].mean((0, 2))
    layers = [LayerRow(i, float(ent_class[i]), float(ent_all[i])) for i in range(L)]
    return ClassReport(int(cls), n, correct, heads, layers)
