"""What a store says about its model, as numbers: the report's sentences are written from these and nothing else.

Every number is a mean over the store's readable images (`valid`), selected by label (mode, metric) as the app's
data layer holds them (`StoreData`). The pruning curves are the ablation service's and the faithfulness of the
input attributions `Service.explain_set`'s (both need the model); a report without them says why.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr

from vitscope.readout import effects as head_effects
from vitscope.readout.store_data import StoreData
from vitscope.text import printable
from vitscope.vocab import EXPLAIN_DIRECTIONS, HEAD_KINDS, NO_BASIS, PATTERNS, PROXY_LABELS, WHOLE_HEAD, head_name

TOP_HEADS = 5  # heads named as the most important overall
CLASS_ROWS = 20  # classes listed one by one (the most frequent); the rest are counted
EFFECT_HEADS = 3  # heads named as writing to the logit directly, and as acting through later layers


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def head_drop(data: StoreData, images: np.ndarray) -> tuple[np.ndarray, str]:
    """([L, H] mean importance of each whole head over the images, what it is): the drop of P[true] when the head
    is pruned; a store without class probabilities by the CLS distance of the attention output instead."""
    if data.prob_basis == NO_BASIS:
        m = data.metrics.index("cls_dist")
        return np.nanmean(data.importance[images, :, :, WHOLE_HEAD, m], 0), "CLS distance when pruned"
    m = data.metrics.index("prob")
    drop = data.baseline_prob[images, None, None] - data.importance[images, :, :, WHOLE_HEAD, m]
    return np.nanmean(drop, 0), "drop of P[true]"


def layer_trends(data: StoreData, images: np.ndarray) -> dict[str, Any]:
    """Per layer, the mean attention distance and strength entropy over the images and heads; each with its
    Spearman ρ against depth (positive: grows with depth)."""
    out: dict[str, Any] = {}
    depth = np.arange(data.layers, dtype=float)
    for key, name in (("distance", "attention_distance"), ("entropy", "strength_entropy")):
        per_layer = np.nanmean(getattr(data, name)[images].astype(np.float64), axis=(0, 2))  # [L]
        out[key] = per_layer.tolist()
        out[f"{key}_rho"] = _rho(depth, per_layer)
    return out


def heads(data: StoreData, images: np.ndarray) -> dict[str, Any]:
    """The heads that matter most overall, and the top head of each class (over its readable images)."""
    drop, what = head_drop(data, images)
    flat = drop.reshape(-1)
    order = np.argsort(-np.nan_to_num(flat, nan=-np.inf), kind="stable")
    positive = np.clip(np.nan_to_num(flat), 0, None)
    top = order[:TOP_HEADS]
    out: dict[str, Any] = {
        "what": what, "drop": drop.tolist(),
        "top": [{"head": head_name(*divmod(int(k), data.heads)), "value": float(flat[k])} for k in top],
        "top_share": float(positive[top].sum() / positive.sum()) if positive.sum() > 0 else float("nan"),
    }
    classes = []
    for cls in data.classes_present:
        rows = np.flatnonzero(data.class_images(cls))
        cdrop = head_drop(data, rows)[0].reshape(-1)
        k = int(np.argmax(np.nan_to_num(cdrop, nan=-np.inf)))
        classes.append({"class": data.class_names[cls], "images": int(len(rows)),
                        "accuracy": float(data.correct[rows].mean()), "head": head_name(*divmod(k, data.heads)),
                        "value": float(cdrop[k])})
    classes.sort(key=lambda c: (-c["images"], c["class"]))
    overall = out["top"][0]["head"] if out["top"] else None
    out["classes"] = classes
    out["classes_with_overall_top"] = sum(c["head"] == overall for c in classes)
    return out


def kinds_and_patterns(data: StoreData, images: np.ndarray) -> dict[str, Any]:
    """Per layer: how many heads of each kind, the sink heads, and the share of the maps with each pattern label."""
    kinds = [{k: int((data.head_kind[layer] == n).sum()) for n, k in enumerate(HEAD_KINDS)}
             for layer in range(data.layers)]
    labels = data.pattern_label[images]  # [n, L, H]
    patterns = [{p: float((labels[:, layer] == n).mean()) if labels.size else 0.0 for n, p in enumerate(PATTERNS)}
                for layer in range(data.layers)]
    sink = np.argwhere(data.head_kind == HEAD_KINDS.index("sink"))
    share = data.head_sink_share
    sinks = [{"head": head_name(int(i), int(h)), "share": None if share is None else float(share[i, h])}
             for i, h in sink]
    return {"kinds": kinds, "patterns": patterns, "sinks": sinks, "sinks_known": data.has_sinks}


def proxy(data: StoreData) -> dict[str, Any] | None:
    """How the gradient proxy ranks heads against exact whole-head pruning (|ΔCE|) over the readable images, as
    the app's proxy view says; None without P[true]."""
    if data.prob_basis == NO_BASIS or not np.isfinite(data.grad_importance).any():
        return None
    a = data.proxy_agreement(signed=False)
    return {"images": a.images, "of_means": a.of_means, "median": a.median, "per_layer": a.per_layer.tolist()}


def effects(data: StoreData, images: np.ndarray) -> dict[str, Any] | None:
    """Each proxy's agreement with exact whole-head pruning over the readable images, the proxy that ranks heads
    closest to it (`readout.effects.best`), and the heads with the largest mean |direct effect| and the largest mean
    indirect effect (total − direct: what a head does through the later layers); None for a store built before
    effects."""
    if not data.has_effects:
        return None
    table = [{"proxy": name, "label": PROXY_LABELS[name], "median": t.magnitude.median,
              "quartiles": list(t.magnitude.quartiles), "of_means": t.magnitude.of_means, "images": t.images}
             for name, t in head_effects.scope_table(data).items() if t.images]
    direct, total = head_effects.effect_values(data, None)  # the means over the readable images [L·H]
    size = np.nanmean(np.abs(data.direct_effect[images].astype(np.float64)), 0).reshape(-1) if len(images) \
        else np.full(direct.shape, np.nan)

    def top(score: np.ndarray) -> list[dict[str, Any]]:
        order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
        return [{"head": head_name(*divmod(int(k), data.heads)), "direct": float(direct[k]), "total": float(total[k]),
                 "size": float(size[k])} for k in order[:EFFECT_HEADS] if np.isfinite(score[k])]

    return {"table": table, "best": head_effects.best(data), "writers": top(size),
            "through": top(np.where(total - direct > 0, total - direct, np.nan)),
            "direct_why": None if np.isfinite(direct).any() else data.effects_why or "it was not computed"}


def explanations(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The faithfulness benchmark (`Service.explain_set`) with, per direction, the maps ranked from most to least
    faithful (ties in `EXPLAIN_METHODS` order, as `most_faithful` breaks them) and whether the best map's 95 %
    interval overlaps the runner-up's: then the sample does not tell the two apart."""
    if result is None:
        return None
    mean, interval = result["mean_auc"], result["interval"]
    ranking, overlap = {}, {}
    for d in EXPLAIN_DIRECTIONS:
        sign = 1 if d == "most_relevant_first" else -1  # a faithful map: low AUC, or high when the least go first
        ranking[d] = sorted(mean, key=lambda m, d=d, sign=sign: sign * mean[m][d])
        if len(ranking[d]) > 1:
            (lo, hi), (lo2, hi2) = (interval[m][d] for m in ranking[d][:2])
            overlap[d] = bool(lo <= hi2 and lo2 <= hi)
        else:
            overlap[d] = None
    return {**result, "ranking": ranking, "overlap": overlap}


def findings(data: StoreData, curves: dict[str, Any] | None = None, explained: dict[str, Any] | None = None,
             explain_why: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything the report states about the store's model (plain numbers and names, JSON-able); `explain_why`
    says why there is no benchmark (`{"reason": "not asked" | "no basis" | "no model", "detail": one line}`)."""
    images = np.flatnonzero(data.valid)
    accuracy = float(data.correct[images].mean()) if data.prob_basis != NO_BASIS and len(images) else None
    return {"model": printable(data.model_spec), "layers": data.layers, "heads": data.heads, "grid": data.grid,
            "images": int(len(images)), "of": int(data.images), "basis": data.prob_basis,
            "basis_text": data.basis_text, "accuracy": accuracy,
            "trends": layer_trends(data, images), "importance": heads(data, images),
            "structure": kinds_and_patterns(data, images), "proxy": proxy(data), "effects": effects(data, images),
            "curves": curves,
            "explanations": explanations(explained),
            "explain_why": None if explained is not None else explain_why or {"reason": "not asked", "detail": ""}}
