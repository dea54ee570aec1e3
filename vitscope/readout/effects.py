"""Heads across layers, as numbers: each head's direct and total effect on the label's logit (an image's, or the mean
over all images or a class), and which cheap proxy ranks heads closest to exact pruning in that scope."""

from __future__ import annotations

import numpy as np

from vitscope.analysis.proxy import SOURCES, ProxyAgreement, best_proxy, table_of
from vitscope.readout.store_data import StoreData
from vitscope.store import MISSING
from vitscope.vocab import PROXIES

EFFECTS_MISSING = MISSING.format("head effects")


def effect_values(data: StoreData, image: int | None, cls: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(direct [L·H], total [L·H]) effects in logits: the image's, or their means over the readable images (of one
    class). NaN for a store without them."""
    if not data.has_effects:
        nan = np.full(data.layers * data.heads, np.nan)
        return nan, nan
    return tuple(data.image_or_mean(name, image, cls).reshape(-1) for name in ("direct_effect", "total_effect"))


def proxy_scores(data: StoreData, name: str, image: int | None, cls: int | None = None) -> np.ndarray:
    """[L·H] one proxy's scores (PROXIES): the image's, or their mean over the readable images (of one class)."""
    if name == "gradient":
        return data.image_or_mean("grad_importance", image, cls).reshape(-1)
    if not data.has_effects:
        return np.full(data.layers * data.heads, np.nan)
    values = _scores(data, name)
    if data.readable(image) is not None:
        return np.asarray(values[image], float).reshape(-1)
    return np.nanmean(values[data.class_images(cls)], 0).reshape(-1) if data.class_images(cls).any() else \
        np.full(data.layers * data.heads, np.nan)


def scope_table(data: StoreData, image: int | None = None, cls: int | None = None) -> dict[str, ProxyAgreement]:
    """Each proxy's rank agreement with the exact total effect for one image, a class, or every readable image
    ({} for a store without effects); computed once per scope."""
    if not data.has_effects:
        return {}
    key = ("image", image) if data.readable(image) is not None else ("class", cls)
    cache = data.__dict__.setdefault("_proxy_tables", {})
    if key not in cache:
        scope = np.arange(data.images) == image if key[0] == "image" else data.class_images(cls)
        cache[key] = table_of({p: _scores(data, p) for p in PROXIES}, data.total_effect, data.valid, scope)
    return cache[key]


def best(data: StoreData, image: int | None = None, cls: int | None = None) -> str | None:
    """The proxy that ranks heads closest to exact pruning in this scope, None without effects."""
    return best_proxy(scope_table(data, image, cls))


def _scores(data: StoreData, proxy: str) -> np.ndarray:
    """[N, L, H] a proxy's scores over every image, as loaded."""
    if proxy == "cls_patch_mass":
        return data.cls_patch_mass
    return data.grad_importance if proxy == "gradient" else getattr(data, SOURCES[proxy])
