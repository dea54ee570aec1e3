"""Two stores of the same images side by side, as numbers: `vitscope.compare.compare` once per pair of stores and
process, the metric both offer, where their unpruned models disagree, layer trends against relative depth, and
per-layer head kinds and pattern labels."""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any

import numpy as np

from vitscope.compare import compare
from vitscope.readout.store_data import StoreData, store_data
from vitscope.vocab import DEFAULT_METRIC, HEAD_KINDS, PATTERNS


@lru_cache(maxsize=4)
def comparison(a: str, b: str) -> dict[str, Any]:
    """`compare()` of two stores, once per process (every session shares it)."""
    return compare(store_data(a).ds, store_data(b).ds)


def shared_metric(da: StoreData, db: StoreData) -> str:
    """The importance metric both stores offer: P[true] where both have class probabilities, else the first
    feature metric they share."""
    both = [m for m in da.metrics_shown if m in db.metrics_shown]
    return DEFAULT_METRIC if DEFAULT_METRIC in both else both[0]


def top1(data: StoreData, images: np.ndarray) -> np.ndarray:
    """[images] the unpruned model's top-1 class of the images at these positions."""
    return data.topk_idx[images, 0, 0, 0, 0]


def disagreements(da: StoreData, db: StoreData, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Indices into the matched images where the two unpruned models' top-1 differ."""
    return np.flatnonzero(top1(da, ia) != top1(db, ib))


def trend_lines(result: dict[str, Any], metric: str) -> tuple[dict[str, list], dict[str, list]]:
    """(A's, B's) points of one per-layer number of `compare()` against relative depth (layer / (L − 1)); B's
    layers in the order they are aligned, each once (relative depth may show one of B's layers twice)."""
    la, lb = result["layer_alignment"]["layers"]
    nan = lambda v: np.nan if v is None else float(v)  # noqa: E731 - JSON's null: a gap in the line
    rows = result["layers"]
    a = {"x": [r["layer"] / max(la - 1, 1) for r in rows], "y": [nan(r[metric][0]) for r in rows],
         "layer": [r["layer"] for r in rows]}
    seen: dict[int, float] = {}
    for r in rows:
        seen.setdefault(r["layer_b"], nan(r[metric][1]))
    b = {"x": [j / max(lb - 1, 1) for j in seen], "y": list(seen.values()), "layer": list(seen)}
    return a, b


def kind_counts(data: StoreData) -> list[dict[str, int]]:
    """Per layer, how many heads of each kind (HEAD_KINDS; another code as 'unknown')."""
    out = []
    for layer in range(data.layers):
        codes = data.head_kind[layer]
        row = {k: int((codes == n).sum()) for n, k in enumerate(HEAD_KINDS)}
        row["unknown"] = int(len(codes) - sum(row.values()))
        out.append(row)
    return out


def pattern_counts(data: StoreData, images: np.ndarray) -> list[dict[str, float]]:
    """Per layer, the heads with each pattern label on the images at these positions (mean count over them)."""
    labels = data.pattern_label[images]
    out = []
    for layer in range(data.layers):
        row = {p: float((labels[:, layer] == n).sum(1).mean()) if len(labels) else 0.0 for n, p in enumerate(PATTERNS)}
        out.append(row)
    return out


def over_matched(data: StoreData, name: str, images: np.ndarray) -> np.ndarray:
    """A per-image variable's mean over the matched images (the images `compare()` reads), NaN left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a head without a value on any image: NaN
        return np.nanmean(getattr(data, name)[images].astype(np.float64), axis=0)
