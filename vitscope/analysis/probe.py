"""Class probabilities for a backbone (a model without a classifier): a linear probe on its unpruned features.

A backbone has no P[class], so `prob` and `jsd` need a head. With labels (at least 2 classes, each with at least
2 images) the build fits the standard evaluation of a backbone: a multinomial logistic regression on the
standardised pooled feature (`adapter.features`), regularisation chosen by stratified k-fold cross-validation.
The standardisation is folded into one linear map (`coef`, `bias` on the raw feature), stored in the store, and
the engine's head for the whole build (and for the service later) is features → that map: `prob` and `jsd` are
then exactly the probe's under each pruning. Without labels there is no basis: the engine runs with a placeholder
head of uniform probabilities and `blank` sets every class output to NaN (or -1).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from vitscope.vocab import CLASSIFIER, LINEAR_PROBE, METRICS, NO_BASIS, STORED_MAPS

if TYPE_CHECKING:
    from vitscope.models.adapter import ViTAdapter
    from vitscope.models.hf import HFViTAdapter

    Backbone = ViTAdapter | HFViTAdapter

CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse regularisation strengths cross-validated
MIN_CLASSES = 2
MIN_PER_CLASS = 2


@dataclass
class Probe:
    """A fitted probe: logits = features @ coef.T + bias on the raw (unstandardised) feature."""

    coef: np.ndarray  # [C, D] float32
    bias: np.ndarray  # [C] float32
    cv_accuracy: float
    C: float  # the chosen inverse regularisation strength
    folds: int


def why_no_probe(labels: np.ndarray, classes: int) -> str | None:
    """Why these labels cannot train a probe (None when they can): one short clause."""
    counts = np.bincount(labels[labels >= 0], minlength=classes)
    present = counts[counts > 0]
    if len(present) < MIN_CLASSES:
        return "the images have no labels" if classes <= 1 else "the images hold fewer than 2 classes"
    if present.min() < MIN_PER_CLASS:
        return f"a class has fewer than {MIN_PER_CLASS} images"
    return None


def fit_probe(features: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0) -> Probe:
    """Multinomial logistic regression on standardised `features` [N, D] → class `labels` [N] in 0..classes-1;
    C from `CS` by stratified k-fold (k = min(5, smallest class)); the standardisation folded into the result."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(features, np.float64)
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0  # as StandardScaler: a constant feature stays 0
    counts = np.bincount(labels, minlength=classes)
    folds = int(min(5, counts[counts > 0].min()))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    clf = LogisticRegressionCV(Cs=list(CS), cv=cv, max_iter=2000, scoring="accuracy", random_state=seed)
    with warnings.catch_warnings():  # scikit-learn's notices of coming default changes: none affects this fit
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit((x - mean) / scale, labels)
    w, b = clf.coef_, clf.intercept_
    if w.shape[0] == 1:  # two classes: sklearn fits one logit; softmax([0, z]) is its sigmoid
        w, b = np.concatenate([np.zeros_like(w), w]), np.concatenate([[0.0], b])
    coef = np.zeros((classes, x.shape[1]))
    bias = np.full(classes, -np.inf)  # a class without images is never predicted
    coef[clf.classes_], bias[clf.classes_] = w / scale, b - (w / scale) @ mean
    scores = clf.scores_  # [folds, Cs] per class (the same for every class: multinomial), or one array
    scores = np.asarray(next(iter(scores.values())) if isinstance(scores, dict) else scores)
    scores = scores.reshape(folds, len(CS), -1).mean(-1)
    return Probe(coef.astype(np.float32), bias.astype(np.float32), float(scores.mean(0).max()),
                 float(np.atleast_1d(clf.C_)[0]), folds)


class HeadedAdapter:
    """A backbone adapter whose `head` is a linear map of its `features` (the probe, or a placeholder of zeros
    when there is no basis); everything else is the backbone's."""

    def __init__(self, base: Backbone, coef: np.ndarray, bias: np.ndarray, basis: str) -> None:
        self._base = base
        self.prob_basis = basis
        self.linear = torch.nn.Linear(coef.shape[1], coef.shape[0]).to(base.device).eval().requires_grad_(False)
        self.linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        self.num_classes = int(coef.shape[0])

    def __getattr__(self, name: str) -> object:
        return getattr(self._base, name)

    def head(self, x: Tensor) -> Tensor:
        """Tokens after the last block → the probe's logits [B, C] (float32)."""
        return self.linear(self._base.features(x).float())

    def frozen_head(self, x: Tensor, ref: Tensor) -> Tensor:
        """`head` with the backbone's final norm scale taken from `ref` (see `ViTAdapter.frozen_head`)."""
        return self.linear(self._base.frozen_head(x, ref, pre_logits=True).float())

    def logits(self, images: Tensor) -> Tensor:
        """The unpruned backbone's probe logits for preprocessed images [B,3,h,w]."""
        b = self._base
        return self.head(b.run_blocks(b.embed(images.to(b.device, b.dtype)), 0))

    def describe(self) -> dict:
        """The backbone's facts, with the head's class count and basis."""
        return {**self._base.describe(), "classes": self.num_classes, "prob_basis": self.prob_basis}


def placeholder(base: Backbone, classes: int) -> HeadedAdapter:
    """The head of a store without a basis: zero logits (uniform probabilities) over `classes` ≥ 1."""
    d = _feature_size(base)
    return HeadedAdapter(base, np.zeros((max(classes, 1), d), np.float32), np.zeros(max(classes, 1), np.float32),
                         NO_BASIS)


def basis_of(adapter: object) -> str:
    """`classifier`, `linear probe` or `none`: what the adapter's class probabilities come from."""
    return getattr(adapter, "prob_basis", CLASSIFIER)


def blank(adapter: object, out: dict) -> dict:
    """Per-image analysis arrays with every class output NaN (topk_idx -1) when the adapter has no basis."""
    if basis_of(adapter) != NO_BASIS:
        return out

    for name in ("baseline_prob", "topk_prob", "grad_importance", "direct_effect", "total_effect"):
        out[name] = torch.full_like(torch.as_tensor(out[name], dtype=torch.float32), float("nan"))
    out["topk_idx"] = torch.full_like(torch.as_tensor(out["topk_idx"]), -1)
    imp = torch.as_tensor(out["importance"]).clone()
    imp[..., [METRICS.index("prob"), METRICS.index("jsd")]] = float("nan")
    out["importance"] = imp
    maps = torch.as_tensor(out["input_map"]).clone()
    maps[:, STORED_MAPS.index("grad_rollout")] = float("nan")  # no target logit to take the gradient of
    out["input_map"] = maps
    return out


def _feature_size(base: Backbone) -> int:
    with torch.inference_mode():
        x = base.embed(torch.zeros(1, 3, base.grid * base.patch_size, base.grid * base.patch_size,
                                   device=base.device, dtype=base.dtype))
        return int(base.features(base.run_blocks(x, 0)).shape[-1])


def unpruned_features(base: Backbone, load: Callable[[int], Tensor | None], count: int, batch_size: int,
                      progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D] of the readable images, their indices) from the unpruned backbone; `load(i)` gives
    image i preprocessed [3,h,w], or None if it cannot be read."""
    from tqdm import tqdm

    feats, rows, batch = [], [], []

    def flush() -> None:
        if batch:
            x = torch.stack([t for _, t in batch]).to(base.device, base.dtype)
            with torch.inference_mode():
                feats.append(base.features(base.run_blocks(base.embed(x), 0)).float().cpu().numpy())
            rows.extend(i for i, _ in batch)
            bar.update(len(batch))
            batch.clear()

    with tqdm(total=count, desc="features for the linear probe", unit="img", disable=not progress) as bar:
        for i in range(count):
            t = load(i)
            if t is None:
                bar.update(1)
                continue
            batch.append((i, t))
            if len(batch) == batch_size:
                flush()
        flush()
    d = _feature_size(base) if not feats else feats[0].shape[1]
    return (np.concatenate(feats) if feats else np.zeros((0, d), np.float32)), np.asarray(rows, np.int64)


def attrs_of(probe: Probe | None, basis: str, feature: str, why: str | None) -> dict:
    """The store attributes that say which basis `prob` and `jsd` have."""
    attrs: dict = {"prob_basis": basis}
    if probe is not None:
        attrs.update(probe_feature=feature, probe_cv_accuracy=probe.cv_accuracy, probe_C=probe.C,
                     probe_folds=probe.folds)
    if why:
        attrs["prob_basis_why"] = why
    return attrs


def feature_name(base: Backbone) -> str:
    """Which feature the probe reads, in words (the store's `probe_feature`)."""
    if hasattr(base.model, "global_pool"):  # timm
        pool = base.model.global_pool or "token"
        return "class token after the final norm" if pool == "token" else f"{pool}-pooled tokens after the final norm"
    return "class token after the final norm (CLIP: post_layernorm)"


def with_stored_head(base: Backbone, basis: str, classes: int, coef: np.ndarray | None,
                     bias: np.ndarray | None) -> Backbone | HeadedAdapter:
    """The adapter a backbone store was built with (`store.read_probe`'s basis, classes and probe): the probe as
    head, or the placeholder; a classifier's adapter is returned as it is."""
    if base.num_classes:
        return base
    if basis == LINEAR_PROBE:
        return HeadedAdapter(base, coef, bias, basis)
    return placeholder(base, classes)


CLASS_METRICS = ("prob", "jsd")  # the metrics that need class probabilities
FEATURE_METRIC = "cls_dist"  # what stands in for them in a store without a basis


def metrics_of(attrs: dict, metrics) -> list[str]:
    """The metrics a store holds values of: all, or only the feature metrics when it has no class basis."""
    none = attrs.get("prob_basis") == NO_BASIS
    return [str(m) for m in metrics if not (none and str(m) in CLASS_METRICS)]


def layout_metric(attrs: dict, wanted: str) -> str:
    """The Image Overview's layout metric: `wanted`, or `cls_dist` when the store has no class basis."""
    return FEATURE_METRIC if attrs.get("prob_basis") == NO_BASIS and wanted in CLASS_METRICS else wanted


def basis_text(attrs: dict) -> str:
    """One line on what `prob` and `jsd` mean in this store (the app's sidebar, the summary)."""
    basis = attrs.get("prob_basis", CLASSIFIER)
    if basis == LINEAR_PROBE:
        return (f"prob/jsd: linear probe on the {attrs.get('probe_feature', 'feature')} (backbone; cross-validated "
                f"accuracy {float(attrs.get('probe_cv_accuracy', float('nan'))):.1%})")
    if basis == NO_BASIS:
        return (f"prob/jsd: unavailable, backbone without labels ({attrs.get('prob_basis_why', 'no labels')}); "
                "cls_dist and patch_dist only")
    return "prob/jsd: the model's classifier"
