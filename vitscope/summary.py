"""Text summary of a store's head importance (what `vitscope demo` prints before it serves the app)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from vitscope.text import printable
from vitscope.vocab import ABLATION_MODES, HEAD_KINDS, MODE_NAMES, OFFSETS, PATTERNS

BARS = " ▁▂▃▄▅▆▇█"


def store_summary(ds: xr.Dataset) -> str:
    valid = ds["valid"].values
    imp = ds["importance"].values[valid]  # [N, L, H, mode, metric]
    N, L, H = imp.shape[:3]
    metric = {m: i for i, m in enumerate(ds["metric"].values)}
    base = imp[..., 0, metric["prob"]]
    top1 = ds["topk_idx"].values[valid][:, 0, 0, 0, 0]
    acc = float((top1 == ds["label"].values[valid]).mean())
    drop = (base - imp[..., 1, metric["prob"]]).mean(0)  # [L, H] mean drop of P[true] with the head pruned
    jsd = imp[..., 1, metric["jsd"]].mean(0)
    grid = int(ds.attrs["patch_grid"])
    lines = [
        f"{printable(ds.attrs['model_spec'])}: {L} layers × {H} heads, {grid}×{grid} patches, {N} images",
        f"accuracy of the unpruned model: {acc:.1%}",
        "",
        "Head importance: mean drop of P[true label] when the head is pruned (mode 1)",
        "         " + "".join(f"  head {h:<3}" for h in range(H)),
    ]
    top = max(float(drop.max()), 1e-12)
    for i in range(L):
        cells = "".join(f" {BARS[int(np.clip(d / top, 0, 1) * (len(BARS) - 1))]} {d:+.4f}" for d in drop[i])
        lines.append(f"layer {i:<2}{cells}")
    order = np.argsort(-jsd.ravel())[:5]
    lines += ["", "Most important heads by mean JSD of the output (mode 1): "
              + ", ".join(f"L{k // H}H{k % H} {jsd.ravel()[k]:.3f}" for k in order)]
    lines += ["", "Mean over all heads, by pruning mode:     drop P[true]    JSD   cls_dist  patch_dist"]
    for m in ABLATION_MODES:
        d = imp[..., m, :].reshape(-1, imp.shape[-1]).mean(0)
        lines.append(f"  mode {m} {MODE_NAMES[m]:<22}       {base.mean() - d[metric['prob']]:+.4f}  "
                     f"{d[metric['jsd']]:.4f}   {d[metric['cls_dist']]:.4f}     {d[metric['patch_dist']]:.4f}")
    ent = ds["strength_entropy"].values[valid].mean(0)  # [L, H]
    dist = ds["attention_distance"].values[valid].mean(0)
    lines += ["", "Attention by layer:  strength entropy (0 local … 1 global)   mean distance (patches)"]
    for i in range(L):
        lines.append(f"  layer {i:<2}            {ent[i].mean():.3f}                          {dist[i].mean():.2f}")
    labels = ds["pattern_label"].values[valid]
    offsets = ds["pattern_offset"].values[valid]
    counts = [f"{name} {np.mean(labels == k):.0%}" for k, name in enumerate(PATTERNS)]
    diag = offsets[labels == 0]
    if diag.size:
        counts[0] += " (" + ", ".join(f"{o} {np.mean(diag == k):.0%}" for k, o in enumerate(OFFSETS)
                                      if np.mean(diag == k) >= 0.01) + ")"
    lines += ["", "Patterns of all heads × images: " + ", ".join(counts)]
    second = ds["pattern_second"].values[valid]
    mixed = [f"{PATTERNS[a]} + {PATTERNS[b]} {share:.0%}" for (a, b), share in _pairs(labels, second)[:3]
             if share >= 0.01]
    if mixed:
        lines.append("  with a second pattern: " + ", ".join(mixed))
    kind = ds["head_kind"].values  # [L, H]
    lines += ["", "Head kinds (agreement of each head's maps across images): "
              + ", ".join(f"{name} {int((kind == k).sum())}" for k, name in enumerate(HEAD_KINDS))]
    for i in range(L):
        names = " ".join(f"{HEAD_KINDS[k] if k >= 0 else '?':<10}" for k in kind[i])
        lines.append(f"  layer {i:<2} {names}".rstrip())
    return "\n".join(lines)


def _pairs(first: np.ndarray, second: np.ndarray) -> list[tuple[tuple[int, int], float]]:
    """(first, second) pattern pairs with a second pattern, most frequent first, with their share of all maps."""
    none = PATTERNS.index("none")
    has = second != none
    keys, counts = np.unique(first[has] * len(PATTERNS) + second[has], return_counts=True)
    order = np.argsort(-counts)
    return [(divmod(int(keys[i]), len(PATTERNS)), counts[i] / first.size) for i in order]
