"""How well cheap per-head scores rank heads like exact pruning does.

Proxy-based tools show only the proxy; the store has both, so vitscope can say how far to trust it: the
Spearman rank correlation between the proxy and the exact effect of pruning the whole head (mode 1), per image,
of the dataset means, and per layer. Pure numpy: arrays in, arrays out.

The gradient proxy |∂CE/∂gate| (Michel et al. 2019) is a first-order estimate of |CE(gate = 0) − CE(gate = 1)|, an
absolute value, so `summary_lines` compares it with |ΔCE| by default; `signed=True` compares with ΔCE itself
(pruning can also help an image: ΔCE < 0).

The proxy table (`proxy_table`) sets every score of `vocab.PROXIES` against the store's `total_effect`, the label's
logit unpruned minus pruned (> 0: the head helps). Sign convention: the table ranks proxies by ρ between |proxy| and
|total effect|, i.e. by how well each finds the heads that move the label's logit most, either way. Four of the
five are magnitudes (≥ 0: gradient, output norm, attention mass, rollout impact) that cannot tell a head that helps
from one that hurts; the direct attribution is signed and enters that ranking as |direct|, so every proxy answers
the same question and their ρ compare. Each row also gives ρ of the proxy as it is against the signed total effect:
for `direct`, whether it also ranks helpful heads above harmful ones; for a magnitude, that is high only where the
heads that matter mostly help, and it decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vitscope.vocab import METRICS, PROXIES, PROXY_LABELS, WHOLE_HEAD

# WHOLE_HEAD: the mode the gradient proxy estimates (the gate from 1 to 0)

TINY = float(np.finfo(np.float32).tiny)  # P'[true] that underflowed to 0 in float32 counts as this


def delta_ce(baseline_prob: np.ndarray, pruned_prob: np.ndarray) -> np.ndarray:
    """ΔCE = log P[true] − log P'[true] (> 0: pruning hurts), broadcast; a P' of 0 is clipped to float32's
    smallest normal so the change stays finite (and ranks last-but-equal instead of breaking the ranks)."""
    p = np.maximum(np.asarray(baseline_prob, np.float64), TINY)
    q = np.maximum(np.asarray(pruned_prob, np.float64), TINY)
    return np.log(p) - np.log(q)


def exact_delta_ce(importance: np.ndarray, baseline_prob: np.ndarray, signed: bool = False) -> np.ndarray:
    """[N, L, H] the exact ΔCE of pruning each whole head (or |ΔCE|), from the store's `importance`
    [N, L, H, mode, metric] (metric `prob` = P'[true]) and `baseline_prob` [N]. NaN rows stay NaN."""
    pruned = importance[..., WHOLE_HEAD, METRICS.index("prob")]
    d = delta_ce(np.asarray(baseline_prob)[:, None, None], pruned)
    d[~np.isfinite(pruned)] = np.nan
    return d if signed else np.abs(d)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their average rank (as scipy.stats.rankdata); NaNs are
    ranked after every number (the caller masks them)."""
    x = np.asarray(x, np.float64)
    shape, n = x.shape, x.shape[-1]
    flat = x.reshape(-1, n)
    rows = flat.shape[0]
    if n == 0 or rows == 0:
        return np.zeros(shape)
    order = np.argsort(flat, axis=1, kind="stable")  # NaN sorts last
    s = np.take_along_axis(flat, order, axis=1)
    new = np.ones_like(s, dtype=bool)  # a new tie group starts here
    same = (s[:, 1:] == s[:, :-1]) | (np.isnan(s[:, 1:]) & np.isnan(s[:, :-1]))
    new[:, 1:] = ~same
    group = np.cumsum(new.ravel()) - 1  # group ids are global: every row starts a new one
    pos = np.tile(np.arange(1, n + 1, dtype=np.float64), rows)
    mean_rank = np.bincount(group, weights=pos) / np.bincount(group)
    ranks = np.empty_like(s)
    np.put_along_axis(ranks, order, mean_rank[group].reshape(rows, n), axis=1)
    return ranks.reshape(shape)


def spearman(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rank correlation of a and b along `axis` (average ranks for ties). Positions where either is
    NaN are left out of that slice; a slice with fewer than 2 pairs left, or a constant one, gives NaN (an
    unreadable image's row is all NaN), never a warning."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    ok = np.isfinite(a) & np.isfinite(b)
    ra = average_ranks(np.where(ok, a, np.nan))  # left-out positions rank after every kept one: kept
    rb = average_ranks(np.where(ok, b, np.nan))  # positions get ranks 1..n_kept, as if alone
    n = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma = np.where(ok, ra, 0).sum(-1) / n
        mb = np.where(ok, rb, 0).sum(-1) / n
        da, db = np.where(ok, ra - ma[..., None], 0), np.where(ok, rb - mb[..., None], 0)
        r = (da * db).sum(-1) / np.sqrt((da**2).sum(-1) * (db**2).sum(-1))
    return np.where(n >= 2, r, np.nan)


@dataclass
class Agreement:
    """Rank agreement of the proxy with exact pruning over the images in scope."""

    per_image: np.ndarray  # [N] ρ over an image's L·H heads (NaN outside the scope or unreadable)
    of_means: float  # ρ between the per-head means over the images in scope
    per_layer: np.ndarray  # [L] ρ of a layer's heads pooled over the images in scope
    images: int  # readable images in scope

    @property
    def median(self) -> float:
        """Median of the per-image ρ (NaN when no image has one)."""
        v = self.per_image[np.isfinite(self.per_image)]
        return float(np.median(v)) if len(v) else float("nan")

    @property
    def quartiles(self) -> tuple[float, float]:
        """25th and 75th percentiles of the per-image ρ, the interquartile range (NaN when no image has one)."""
        v = self.per_image[np.isfinite(self.per_image)]
        if not len(v):
            return float("nan"), float("nan")
        q25, q75 = np.percentile(v, [25, 75])
        return float(q25), float(q75)


def agreement(proxy: np.ndarray, exact: np.ndarray, scope: np.ndarray | None = None) -> Agreement:
    """The three agreement figures of `proxy` and `exact` [N, L, H] over the images in `scope` ([N] bool,
    default all); images whose rows are NaN drop out of every figure."""
    proxy, exact = np.asarray(proxy, np.float64), np.asarray(exact, np.float64)
    N, L, H = proxy.shape
    scope = np.ones(N, bool) if scope is None else np.asarray(scope, bool)
    readable = scope & np.isfinite(proxy).all((1, 2)) & np.isfinite(exact).all((1, 2))
    per_image = np.full(N, np.nan)
    per_image[readable] = spearman(proxy[readable].reshape(-1, L * H), exact[readable].reshape(-1, L * H))
    if readable.any():
        of_means = float(spearman(proxy[readable].mean(0).ravel(), exact[readable].mean(0).ravel()))
        pooled = lambda x: np.moveaxis(x[readable], 1, 0).reshape(L, -1)  # noqa: E731 - [L, n·H]
        per_layer = spearman(pooled(proxy), pooled(exact))
    else:
        of_means, per_layer = float("nan"), np.full(L, np.nan)
    return Agreement(per_image, of_means, per_layer, int(readable.sum()))


def summary_lines(importance: np.ndarray, baseline_prob: np.ndarray, grad_importance: np.ndarray,
                  valid: np.ndarray) -> list[str]:
    """What `vitscope info STORE` says about the proxy: its Spearman ρ with |ΔCE| and with signed ΔCE."""
    lines = []
    for signed in (False, True):
        a = agreement(grad_importance, exact_delta_ce(importance, baseline_prob, signed=signed), valid)
        if not a.images:
            return ["no readable image with both the proxy and exact pruning"]
        if not lines:
            lines.append(f"Spearman ρ of |∂CE/∂gate| with exact whole-head pruning over {a.images} images:")
        layers = " ".join(f"{r:+.2f}" for r in a.per_layer)
        lines.append(f"vs {'ΔCE' if signed else '|ΔCE|':<5}  median per image {a.median:+.2f}, of the dataset "
                     f"means {a.of_means:+.2f}; per layer {layers}")
    return lines


EXACT = "total_effect"  # the store's exact ground truth: label logit unpruned − pruned, per image and head
SOURCES = {"gradient": "grad_importance", "direct": "direct_effect", "output_norm": "output_norm",
           "cls_patch_mass": "cls_attention", "rollout_impact": "rollout_impact"}  # proxy → the store's variable


@dataclass
class ProxyAgreement:
    """One proxy's rank agreement with the total effect over the images in scope."""

    magnitude: Agreement  # |proxy| against |total effect|: what the table ranks by
    signed: Agreement  # the proxy as it is against the signed total effect

    @property
    def images(self) -> int:
        return self.magnitude.images


def cls_patch_mass(cls_attention) -> np.ndarray:
    """[..., 2N+1] CLS vectors (analysis/cls.py: CLS→CLS, CLS→patches, patches→CLS) → [...] the summed CLS→patches
    part: the share of the class token's attention that reads the image. Sliced before it is read, so a lazy store
    variable loads only that part."""
    n = (cls_attention.shape[-1] - 1) // 2
    return np.asarray(cls_attention[..., 1:1 + n]).sum(-1, dtype=np.float64)


def proxy_values(name: str, source) -> np.ndarray:
    """[N, L, H] float64 scores of proxy `name` from its store variable (`SOURCES[name]`)."""
    return cls_patch_mass(source) if name == "cls_patch_mass" else np.asarray(source, np.float64)


def proxy_table(arrays: Mapping, valid: np.ndarray, scope: np.ndarray | None = None) -> dict[str, ProxyAgreement]:
    """Each proxy's agreement with exact pruning, in PROXIES order: `arrays` maps store variable names (`SOURCES`,
    `total_effect`) to [N, L, H] arrays (`cls_attention` [N, L, H, 2N+1]); a store's dataset will do. `scope` [N]
    bool picks the images (a class: `label == c`; one image: `arange(N) == i`, whose median and of-means are then
    its own ρ), always within `valid`. A proxy whose variable is missing (an older store) is left out; without
    `total_effect` the table is empty."""
    if EXACT not in arrays:
        return {}
    scores = {name: proxy_values(name, arrays[SOURCES[name]]) for name in PROXIES if SOURCES[name] in arrays}
    return table_of(scores, arrays[EXACT], valid, scope)


def table_of(scores: Mapping[str, np.ndarray], total: np.ndarray, valid: np.ndarray,
             scope: np.ndarray | None = None) -> dict[str, ProxyAgreement]:
    """`proxy_table` from the proxies' scores themselves ({proxy: [N, L, H]}) and the total effect [N, L, H]."""
    total = np.asarray(total, np.float64)
    scope = np.asarray(valid, bool) & (True if scope is None else np.asarray(scope, bool))
    table = {}
    for name in PROXIES:
        if name in scores:
            values = np.asarray(scores[name], np.float64)
            table[name] = ProxyAgreement(agreement(np.abs(values), np.abs(total), scope),
                                         agreement(values, total, scope))
    return table


def best_proxy(table: dict[str, ProxyAgreement]) -> str | None:
    """The proxy that ranks heads closest to exact pruning: the highest median per-image ρ with |total effect|,
    ties broken by ρ of the means, then by PROXIES order; None when no proxy has a median."""
    def key(name: str) -> tuple[float, float]:
        a = table[name].magnitude
        return tuple(v if np.isfinite(v) else -np.inf for v in (a.median, a.of_means))

    ranked = [name for name in PROXIES if name in table and np.isfinite(table[name].magnitude.median)]
    return max(ranked, key=key) if ranked else None


def table_lines(table: dict[str, ProxyAgreement]) -> list[str]:
    """What `vitscope info STORE` prints of a proxy table: a line per proxy with images, and the verdict."""
    rows = {name: t for name, t in table.items() if t.images}
    if not rows:
        return ["no readable image with both a proxy and the total effect"]
    width = max(len(PROXY_LABELS[name]) for name in rows)
    lines = ["Spearman ρ with |total effect| of exact whole-head pruning: median [IQR] per image, of the means; "
             "signed: vs the signed total"]
    for name, t in rows.items():
        m, s = t.magnitude, t.signed
        q25, q75 = m.quartiles
        lines.append(f"{PROXY_LABELS[name]:<{width}}  {m.median:+.2f} [{q25:+.2f}, {q75:+.2f}], of the means "
                     f"{m.of_means:+.2f}; signed {s.median:+.2f}, {s.of_means:+.2f} ({t.images} {_images(t.images)})")
    best = best_proxy(rows)
    if best is not None:
        lines.append(f"for this model, {PROXY_LABELS[best]} ranks heads closest to exact pruning")
    return lines


def _images(n: int) -> str:
    return "image" if n == 1 else "images"
