"""Text about a store: the summary `vitscope demo` prints before it serves the app, and what `vitscope info` says
of a store (`describe`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from vitscope import store
from vitscope.analysis.probe import basis_text
from vitscope.text import printable
from vitscope.vocab import (
    ABLATION_MODES,
    CLASSIFIER,
    HEAD_KINDS,
    LINEAR_PROBE,
    METRICS,
    MODE_NAMES,
    NO_BASIS,
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
    basis = ds.attrs.get("prob_basis", CLASSIFIER)
    probed = " of its linear probe" if basis == LINEAR_PROBE else ""
    lines = [
        f"{printable(ds.attrs['model_spec'])}: {L} layers × {H} heads, {grid}×{grid} patches, {N} images",
        basis_text(ds.attrs) if basis == NO_BASIS else f"accuracy{probed} of the unpruned model: {acc:.1%}"
        + (" on the images it was fitted on (optimistic; cross-validated below)" if probed else ""),
    ]
    if basis == LINEAR_PROBE:
        lines.append(basis_text(ds.attrs))
    if basis != NO_BASIS:  # a backbone without labels has no P[true]: its heads by the feature metric below
        lines += ["", f"Head importance: mean drop of P[true label]{probed} when the head is pruned (mode 1)",
                  "         " + "".join(f"  head {h:<3}" for h in range(H))]
        top = max(float(drop.max()), 1e-12)
        for i in range(L):
            cells = "".join(f" {BARS[int(np.clip(d / top, 0, 1) * (len(BARS) - 1))]} {d:+.4f}" for d in drop[i])
            lines.append(f"layer {i:<2}{cells}")
    rank, what = (jsd, "JSD of the output") if basis != NO_BASIS else (
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


def prob_basis_row(attrs: dict) -> tuple[str, str]:
    """`vitscope info`'s line on what `prob` and `jsd` are computed from."""
    basis = attrs.get("prob_basis", CLASSIFIER)
    if basis == LINEAR_PROBE:
        return ("prob basis", f"linear probe on the {attrs.get('probe_feature', 'feature')} (cross-validated "
                              f"accuracy {attrs.get('probe_cv_accuracy', float('nan')):.1%}); the model has no "
                              "classifier")
    if basis == NO_BASIS:
        return ("prob basis", f"none: prob and jsd are NaN ({attrs.get('prob_basis_why', 'no labels')}); "
                              "cls_dist and patch_dist hold")
    return ("prob basis", "the model's classifier")


def head_kind_rows(kind: np.ndarray, agree: np.ndarray) -> list[tuple[str, str]]:
    """`vitscope info` rows on positional / content / mixed heads: counts, then one letter per head by layer."""
    counts = ", ".join(f"{name} {int((kind == k).sum())}" for k, name in enumerate(HEAD_KINDS))
    letters = "  ".join("".join(HEAD_KINDS[k][0].upper() if k >= 0 else "?" for k in layer) for layer in kind)
    return [("head kinds", f"{counts} (agreement of each head's maps across images, mean {np.nanmean(agree):.2f})"),
            ("by layer", letters)]


def describe(path: str | Path) -> str:
    """What `vitscope info STORE` prints: model, images, classes, size, schema, analyses present."""
    path = Path(path)
    attrs = store.check(path)
    lay = store.read_shape(path)
    done = int(store.done_chunks(path).sum())
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    ds = store.open_dataset(path)
    names = [str(c) for c in ds["class_name"].values]
    valid = int(ds["valid"].values.sum())
    fp = json.loads(attrs["fingerprint"])
    state = "complete" if attrs.get("complete") else f"unfinished: {done}/{lay.chunks} chunks (run build again)"
    pending = set(attrs.get("layouts_pending", []))  # a store opens before its layouts are all computed
    if pending:
        state = (f"layouts pending: {', '.join(sorted(pending))} (a running `vitscope demo` fills them in; "
                 "else run the same build again)")
        pending |= {"pattern_latent"} if "head_xy_patch" in pending else set()
    present = ([k for k in lay.variables() if (k not in store.GLOBAL or attrs.get("complete")) and k not in pending
                and k in ds] if done else ["none yet"])
    rows = [
        ("store", f"{path}  ({state})"),
        ("model", f"{attrs['model_spec']} ({attrs['model_class']}), weights {fp['weights']}"),
        ("shape", f"{lay.layers} layers × {lay.heads} heads, {lay.grid}×{lay.grid} patches, "
                  f"{attrs['num_prefix_tokens']} prefix token(s)"),
        ("images", f"{lay.images} listed, {valid} analysed, from {attrs['image_source']}"),
        ("classes", f"{lay.classes}: {', '.join(names[:5])}{', …' if len(names) > 5 else ''}"),
        ("size on disk", f"{size / 1e6:.1f} MB ({size / max(lay.images, 1) / 1e3:.1f} kB per image)"),
        prob_basis_row(attrs),
        ("schema", f"v{attrs['vitscope_schema']} (vitscope {attrs['vitscope_version']})"),
        ("analyses", ", ".join(present)),
    ]
    if attrs.get("complete"):
        rows += head_kind_rows(ds["head_kind"].values, ds["head_consistency"].values)
    if "ae_loss" in attrs:
        rows.append(("autoencoder", f"reconstruction loss {attrs['ae_loss'][-1]:.4f} after {len(attrs['ae_loss'])} "
                                    "epochs"))
    return "\n".join(f"{k:>13}: {v}" for k, v in rows)
