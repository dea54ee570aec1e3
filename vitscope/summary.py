"""Text summary of a store's head importance (what `vitscope demo` prints before it serves the app)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from vitscope.analysis.probe import basis_text
from vitscope.text import printable
from vitscope.vocab import (
    ABLATION_MODES,
    HEAD_KINDS,
    METRICS,
    MODE_NAMES,
    OFFSETS,
    PATTERNS,
    SINK_SHARE,
    WHOLE_HEAD,
    head_name,
)

BARS = " ▁▂▃▄▅▆▇█"


def store_summary(ds: xr.Dataset) -> str:
    """The summary `vitscope demo` prints: every number selected by label (mode, metric), so a store whose axes
    are reordered or subset still gives the right layer, mode and metric."""
    ok = ds.isel(image=np.flatnonzero(ds["valid"].values))  # the readable images
    imp = ok["importance"].transpose("image", "layer", "head", "mode", "metric")
    N, L, H = imp.shape[:3]

    def pruned(mode: int, metric: str) -> np.ndarray:
        return imp.sel(mode=mode, metric=metric).values  # [N, L, H]

    base = pruned(0, "prob")
    top1 = ok["topk_idx"].sel(mode=0).isel(layer=0, head=0, k=0).values  # unpruned: the same for every head
    acc = float((top1 == ok["label"].values).mean())
    drop = (base - pruned(WHOLE_HEAD, "prob")).mean(0)  # [L, H] mean drop of P[true] with the head pruned
    jsd = pruned(WHOLE_HEAD, "jsd").mean(0)
    grid = int(ds.attrs["patch_grid"])
    basis = ds.attrs.get("prob_basis", "classifier")
    probed = " of its linear probe" if basis == "linear probe" else ""
    lines = [
        f"{printable(ds.attrs['model_spec'])}: {L} layers × {H} heads, {grid}×{grid} patches, {N} images",
        basis_text(ds.attrs) if basis == "none" else f"accuracy{probed} of the unpruned model: {acc:.1%}"
        + (" on the images it was fitted on (optimistic; cross-validated below)" if probed else ""),
    ]
    if basis == "linear probe":
        lines.append(basis_text(ds.attrs))
    if basis != "none":  # a backbone without labels has no P[true]: its heads by the feature metric below
        lines += ["", f"Head importance: mean drop of P[true label]{probed} when the head is pruned (mode 1)",
                  "         " + "".join(f"  head {h:<3}" for h in range(H))]
        top = max(float(drop.max()), 1e-12)
        for i in range(L):
            cells = "".join(f" {BARS[int(np.clip(d / top, 0, 1) * (len(BARS) - 1))]} {d:+.4f}" for d in drop[i])
            lines.append(f"layer {i:<2}{cells}")
    rank, what = (jsd, "JSD of the output") if basis != "none" else (
        pruned(WHOLE_HEAD, "cls_dist").mean(0), "CLS distance of the attention output")
    order = np.argsort(-rank.ravel())[:5]
    lines += ["", f"Most important heads by mean {what} (mode 1): "
              + ", ".join(f"L{k // H}H{k % H} {rank.ravel()[k]:.3f}" for k in order)]
    lines += ["", "Mean over all heads, by pruning mode:     drop P[true]    JSD   cls_dist  patch_dist"]
    for m in ABLATION_MODES:
        d = {name: pruned(m, name).mean() for name in METRICS}
        lines.append(f"  mode {m} {MODE_NAMES[m]:<22}       {base.mean() - d['prob']:+.4f}  "
                     f"{d['jsd']:.4f}   {d['cls_dist']:.4f}     {d['patch_dist']:.4f}")
    ent = ok["strength_entropy"].transpose("image", "layer", "head").values.mean(0)  # [L, H]
    dist = ok["attention_distance"].transpose("image", "layer", "head").values.mean(0)
    lines += ["", "Attention by layer:  strength entropy (0 local … 1 global)   mean distance (patches)"]
    for i in range(L):
        lines.append(f"  layer {i:<2}            {ent[i].mean():.3f}                          {dist[i].mean():.2f}")
    labels = ok["pattern_label"].values
    offsets = ok["pattern_offset"].values
    counts = [f"{name} {np.mean(labels == k):.0%}" for k, name in enumerate(PATTERNS)]
    diag = offsets[labels == 0]
    if diag.size:
        counts[0] += " (" + ", ".join(f"{o} {np.mean(diag == k):.0%}" for k, o in enumerate(OFFSETS)
                                      if np.mean(diag == k) >= 0.01) + ")"
    lines += ["", "Patterns of all heads × images: " + ", ".join(counts)]
    second = ok["pattern_second"].values
    mixed = [f"{PATTERNS[a]} + {PATTERNS[b]} {share:.0%}" for (a, b), share in _pairs(labels, second)[:3]
             if share >= 0.01]
    if mixed:
        lines.append("  with a second pattern: " + ", ".join(mixed))
    kind = ds["head_kind"].transpose("layer", "head").values  # [L, H]
    lines += ["", "Head kinds (agreement of each head's maps across images): "
              + ", ".join(f"{name} {int((kind == k).sum())}" for k, name in enumerate(HEAD_KINDS))]
    for i in range(L):
        names = " ".join(f"{HEAD_KINDS[k] if k >= 0 else '?':<10}" for k in kind[i])
        lines.append(f"  layer {i:<2} {names}".rstrip())
    lines.append("")
    if "head_sink_share" in ds:
        lines += sink_lines(ds)
    else:
        lines.append("Attention sinks: not in this store (built before vitscope kept them; rebuild it to add them)")
    return "\n".join(lines)


def sink_lines(ds: xr.Dataset) -> list[str]:
    """Attention sinks, sink heads, high-norm patches and the prefix tokens' share per layer (`vitscope info` and the
    summary): what a trained ViT without registers uses a few fixed patches for (Darcet et al. 2023)."""
    ok = ds.isel(image=np.flatnonzero(ds["valid"].values))  # the readable images
    grid = int(ds.attrs["patch_grid"])
    L = ds.sizes["layer"]
    ranks = ds.sizes["rank"]
    share, kind = (ds[name].transpose("layer", "head").values for name in ("head_sink_share", "head_kind"))
    sink = np.argwhere(kind == HEAD_KINDS.index("sink"))
    lines = [f"Sink heads (≥ {SINK_SHARE:.0%} of the 1s of their binarised maps, over all images, on the same "
             f"≤ {ranks} target patches): "
             + (", ".join(f"{head_name(i, h)} {share[i, h]:.0%}" for i, h in sink) if len(sink) else "none")]
    if not len(sink) and np.isfinite(share).any():
        i, h = np.unravel_index(np.nanargmax(share), share.shape)
        lines[-1] += f" (the most concentrated: {head_name(i, h)} {share[i, h]:.0%})"
    prefix = [str(p) for p in ds["prefix"].values]
    groups = {"cls": [0]}  # the prefix tokens' share, registers together
    for name in ("dist", "reg"):
        at = [k for k, p in enumerate(prefix) if p.startswith(name)]
        if at:
            groups[{"reg": "registers"}.get(name, name)] = at
    prefix_share = ok["prefix_share"].transpose("image", "layer", "prefix").values.astype(np.float64)  # [N, L, n]
    top_share = ok["sink_share"].transpose("image", "layer", "rank").values.astype(np.float64).sum(-1).mean(0)  # [L]
    norm = ok["norm_ratio"].isel(rank=0).transpose("image", "layer").values.astype(np.float64).mean(0)  # [L] largest

    def tokens(name: str, layer: int) -> str:
        cells = [f"{_patch(int(t), grid)} {f:.0%}" for t, f in zip(ds[f"{name}_tokens"].isel(layer=layer).values,
                                                                  ds[f"{name}_frequency"].isel(layer=layer).values,
                                                                  strict=True) if t >= 0]
        return "  ".join(cells)

    width = max(len(tokens("sink", i)) for i in range(L))
    norm_width = max(len(tokens("norm", i)) for i in range(L))
    lines += ["", f"Attention sinks per layer: the patches (row, col) most often among an image's {ranks} most "
              "attended by the patches (% of images); the mean share of the patches' attention",
              f"on an image's top {ranks} and on the prefix tokens; the patches most often among an image's {ranks} "
              "largest block outputs, and the largest norm over the median patch's",
              f"  layer  {'most attended patches':<{width}}  top {ranks:<2} "
              + "".join(f"{g:>10}" for g in groups) + f"  {'high-norm patches':<{norm_width}}  norm"]
    for i in range(L):
        shares = "".join(f"{prefix_share[:, i, at].sum(-1).mean():>10.1%}" for at in groups.values())
        lines.append(f"  {i:>5}  {tokens('sink', i):<{width}}  {top_share[i]:>5.1%}{shares}  "
                     f"{tokens('norm', i):<{norm_width}}  ×{norm[i]:.1f}")
    return lines


def _patch(token: int, grid: int) -> str:
    """A patch index as (row,col) on the grid."""
    return "({},{})".format(*divmod(token, grid))


def _pairs(first: np.ndarray, second: np.ndarray) -> list[tuple[tuple[int, int], float]]:
    """(first, second) pattern pairs with a second pattern, most frequent first, with their share of all maps."""
    none = PATTERNS.index("none")
    has = second != none
    keys, counts = np.unique(first[has] * len(PATTERNS) + second[has], return_counts=True)
    order = np.argsort(-counts)
    return [(divmod(int(keys[i]), len(PATTERNS)), counts[i] / first.size) for i in order]
