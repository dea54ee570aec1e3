"""Which heads matter, as numbers: a metric over every head (an image's, or the mean over all images or a class), a
head in every pruning mode, a cheap proxy beside it and how well it ranks heads, the heads that matter most."""

from __future__ import annotations

import numpy as np

from vitscope.analysis.proxy import ProxyAgreement
from vitscope.heads import Head, parse_head
from vitscope.readout.effects import EFFECTS_MISSING, best, scope_table
from vitscope.readout.store_data import StoreData
from vitscope.vocab import HEAD_KINDS, PROXIES, WHOLE_HEAD, harm


def kind_columns(data: StoreData) -> dict[str, list]:
    """Per head (flat order): its kind's name, its maps' agreement across images and the share of their 1s on its
    SINK_RANKS most-hit target patches (NaN without the sink analysis); fixed per store."""
    kinds = [HEAD_KINDS[k] if 0 <= k < len(HEAD_KINDS) else "unknown" for k in data.head_kind.reshape(-1)]
    sink = data.head_sink_share if data.has_sinks else np.full(data.head_kind.shape, np.nan)
    return {"kind": kinds, "agree": data.head_consistency.reshape(-1).astype(float),
            "sink": sink.reshape(-1).astype(float)}


def importance_values(data: StoreData, metric: str, mode: int, image: int | None, cls: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """(values [L·H], std [L·H] or None): the image's, or the mean and std over all images (of one class)."""
    if data.readable(image) is not None:
        return data.metric_values(metric, mode)[image], None
    return data.band(metric, mode, cls)


def head_at(data: StoreData, x: float) -> tuple[int, int]:
    """(layer, head) at x on the line of all heads (the nearest head; clipped to the first and last)."""
    return divmod(int(np.clip(round(x), 0, data.layers * data.heads - 1)), data.heads)


def mode_values(data: StoreData, metric: str, layer: int, head: int, image: int | None,
                cls: int | None = None) -> np.ndarray:
    """[modes] the head's metric in every pruning mode (image, or mean over images / one class)."""
    return data.image_or_mean("importance", image, cls)[layer, head, :, data.metrics.index(metric)]


def proxy_values(data: StoreData, image: int | None, cls: int | None = None) -> np.ndarray:
    """[L·H] the gradient proxy |∂CE/∂gate| of the image, or its mean over all images (of one class)."""
    return data.image_or_mean("grad_importance", image, cls).reshape(-1)


def proxy_range(proxy: np.ndarray, y: np.ndarray, start: float, end: float, metric: str) -> tuple[float, float]:
    """The proxy axis's (start, end) that lays the proxy's min..max over the metric line's min..max on a y axis
    from `start` to `end`; flipped for `prob` (a large proxy means important, as a low P'[true])."""
    if not (np.isfinite(proxy).any() and np.isfinite(y).any()):  # no proxy (no labels) or no metric: any axis
        return 0.0, 1.0
    pmin, pmax, ymin, ymax = (float(f(v)) for v in (proxy, y) for f in (np.nanmin, np.nanmax))
    if not np.isfinite([pmin, pmax, ymin, ymax]).all():
        return 0.0, 1.0
    pspan, yspan = max(pmax - pmin, 1e-12), max(ymax - ymin, 1e-12)
    at = lambda v: pmin + (v - ymin) / yspan * pspan  # noqa: E731 - proxy value drawn at height v
    if metric == "prob":
        at = lambda v: pmax - (v - ymin) / yspan * pspan  # noqa: E731
    return at(start), at(end)


def agreement_values(data: StoreData, image: int | None, cls: int | None = None) -> dict[str, object]:
    """Spearman ρ of the proxy with exact whole-head ΔCE and |ΔCE|: per layer (the image's heads, or the
    layer's heads pooled over all images / one class) and overall (the image's, or the median per image and
    the ρ of the means)."""
    signed, absolute = data.proxy_agreement(True, cls), data.proxy_agreement(False, cls)
    image = data.readable(image)
    if image is not None:
        return {"signed": data.proxy_layers(True)[image], "abs": data.proxy_layers(False)[image],
                "overall": (float(data.proxy_agreement(True).per_image[image]),
                            float(data.proxy_agreement(False).per_image[image])), "means": None}
    return {"signed": signed.per_layer, "abs": absolute.per_layer, "overall": (signed.median, absolute.median),
            "means": (signed.of_means, absolute.of_means)}


def has_values(data: StoreData, name: str) -> bool:
    """Whether the store's per-image variable `name` holds a number for a readable image: an older store lacks the
    head effects, and a synthetic store (or a model whose direct effect is undefined) holds them as NaN."""
    values = getattr(data, name, None)
    return values is not None and bool(np.isfinite(values[data.valid]).any())


def effects_note(data: StoreData, what: str = "head effects") -> str:
    """Why the store has no effects to show: an older store's rebuild line, or the build's own reason."""
    if not data.has_effects:
        return EFFECTS_MISSING.replace("not in this store", f"{what}: not in this store", 1)
    return f"{what}: this store holds none" + (f" ({data.effects_why})" if data.effects_why else "")


def proxy_choices(data: StoreData) -> tuple[str, ...]:
    """The proxies the view can draw: every one where the store has the exact total effect to rank them against;
    otherwise only the gradient, ranked against whole-head pruning's ΔCE."""
    return PROXIES if has_values(data, "total_effect") else ("gradient",)


def default_proxy(data: StoreData, cls: int | None = None) -> str:
    """The proxy shown until the reader picks one: the one that ranks heads closest to exact pruning over all images
    (or a class's), the gradient where the store cannot say. Not an image's own best: one image's ρ over its heads is
    too noisy to choose by, and a line that changed proxy with every image would not compare across images."""
    return best(data, None, cls) or "gradient"


def proxy_agreement(data: StoreData, proxy: str, image: int | None, cls: int | None = None
                    ) -> ProxyAgreement | None:
    """The proxy's rank agreement with the exact total effect in this scope (image, class or all); None without
    the store's effects."""
    return scope_table(data, image, cls).get(proxy)


def value_range(values: np.ndarray, *, floor: float | None = None) -> tuple[float, float] | None:
    """(min, max) of the finite values (with `floor` in the range too), None when there are none: nanmin/nanmax
    without their all-NaN warning."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if floor is None else (min(floor, low), max(floor, high))


def most_important_heads(data: StoreData, image: int, metric: str, mode: int, k: int) -> list[tuple[int, int]]:
    """The k heads whose pruning changes the image's prediction most (lowest P'[true], else largest distance)."""
    v = data.metric_values(metric, mode)[image]  # [L·H]
    score = harm(metric, v)
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")[:k]
    return [divmod(int(i), data.heads) for i in order]


def default_head(data: StoreData, image: int | None) -> Head:
    """The head a reader wants first: the one whose pruning hurts the (readable) image most (its metric in mode 1),
    or over all images the one with the largest mean harm."""
    metric = "prob" if "prob" in data.metrics_shown else data.layout_metric
    if image is not None:
        return parse_head(most_important_heads(data, image, metric, WHOLE_HEAD, 1)[0])
    mean = np.nanmean(data.metric_values(metric, WHOLE_HEAD)[data.valid], 0)
    k = int(np.argmax(np.nan_to_num(harm(metric, mean), nan=-np.inf)))
    return Head(*divmod(k, data.heads))
