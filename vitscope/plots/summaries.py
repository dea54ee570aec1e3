"""Whole-store summaries as HoloViews elements: what `vitscope demo` prints as text (`summary.py`), as figures.

Means over images come from `StoreData` (the readable images, or one class's), as the app's views compute them.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np

from vitscope.analysis.proxy import exact_delta_ce
from vitscope.plots.palette import CONTINUOUS, DISTANCE, ENTROPY, HEAD, LAYER, metric_dim, styled
from vitscope.plots.views import scope_text
from vitscope.readout.palette import OKABE_ITO, layer_colours
from vitscope.readout.store_data import Store, store_data
from vitscope.vocab import DEFAULT_METRIC, HEAD_KINDS, MODE_NAMES, PATTERNS, WHOLE_HEAD, curve_parts

COUNT = hv.Dimension("count", label="heads")
MAP_SHARE = hv.Dimension("share", label="share of the layer's maps", range=(0.0, 1.0),
                         value_format=lambda v: f"{v:.0%}")


def importance_matrix(store: Store, metric: str = DEFAULT_METRIC, mode: int = WHOLE_HEAD,
                      cls: int | None = None) -> hv.HeatMap:
    """Layer × head heatmap of a metric's mean over the readable images (or a class) with the head pruned in
    `mode` (default: the whole head): which heads matter, at a glance."""
    data = store_data(store)
    mean = data.band(metric, mode, cls)[0].reshape(data.layers, data.heads)
    layer, head = np.divmod(np.arange(mean.size), data.heads)
    value = metric_dim(metric)
    return styled(hv.HeatMap({"head": head, "layer": layer, metric: mean.ravel()}, [HEAD, LAYER], value),
                  bokeh={"tools": ["hover"]}, cmap=CONTINUOUS, colorbar=True, invert_yaxis=True,
                  title=f"{value.label} with the head pruned ({MODE_NAMES[mode]}), {scope_text(data, None, cls)}")


def layer_trends(store: Store, cls: int | None = None) -> hv.Layout:
    """Per layer, the mean over its heads (and the readable images, or a class) of the mean attention distance and
    of the strength entropy: where the model turns from local to global attention (ViT paper, Fig. 7)."""
    data = store_data(store)
    layers = np.arange(data.layers)
    panels = []
    for name, dim in (("attention_distance", DISTANCE), ("strength_entropy", ENTROPY)):
        per_layer = data.over_images(name, cls)[0].mean(axis=1)  # [L, H] → [L]
        curve = styled(hv.Curve((layers, per_layer), LAYER, dim), color=layer_colours(1)[0])
        dots = styled(hv.Scatter((layers, per_layer), LAYER, dim), bokeh={"size": 6, "tools": ["hover"]},
                      mpl={"s": 12}, color="layer", cmap=layer_colours(data.layers))
        panels.append(styled(curve * dots, title=f"{dim.label} by layer, {scope_text(data, None, cls)}",
                             xticks=[(int(i), str(i)) for i in layers]))
    return hv.Layout(panels).cols(2)


def pattern_kind_matrix(store: Store) -> hv.Layout:
    """Per layer: how many heads are of each kind (positional, content, mixed, sink; over the whole store) and
    which share of its binarised maps (readable images × heads) carries each pattern label."""
    data = store_data(store)
    kinds = [*HEAD_KINDS, "unknown"]
    code = np.where((data.head_kind >= 0) & (data.head_kind < len(HEAD_KINDS)), data.head_kind, len(HEAD_KINDS))
    rows = [(kinds[k], layer, int((code[layer] == k).sum())) for layer in range(data.layers)
            for k in range(len(kinds))]
    kind = hv.Dimension("kind", label="head kind")
    kind_map = styled(hv.HeatMap(rows, [kind, LAYER], COUNT), bokeh={"tools": ["hover"]}, cmap=CONTINUOUS,
                      colorbar=True, invert_yaxis=True, title="head kinds per layer")
    labels = data.pattern_label[data.valid]  # [n, L, H]
    total = max(labels.shape[0] * data.heads, 1)
    rows = [(PATTERNS[p], layer, float((labels[:, layer] == p).sum()) / total) for layer in range(data.layers)
            for p in range(len(PATTERNS))]
    pattern = hv.Dimension("pattern", label="pattern label")
    pattern_map = styled(hv.HeatMap(rows, [pattern, LAYER], MAP_SHARE), bokeh={"tools": ["hover"]}, cmap=CONTINUOUS,
                         colorbar=True, clim=(0.0, 1.0), invert_yaxis=True,
                         title=f"pattern labels per layer ({int(data.valid.sum())} images)")
    return (kind_map + pattern_map).cols(2)


def proxy_vs_exact(store: Store, signed: bool = False, cls: int | None = None) -> hv.Scatter:
    """Each head's mean gradient proxy |∂CE/∂gate| against its mean exact whole-head pruning ΔCE (or |ΔCE|) over
    the readable images (or a class), with Spearman ρ of the two means in the title: does the cheap proxy rank
    heads as pruning them does?"""
    data = store_data(store)
    scope = data.class_images(cls)
    exact = exact_delta_ce(data.importance, data.baseline_prob, signed=signed)[scope]  # [n, L, H]
    exact_mean = exact.mean(0) if len(exact) else np.full((data.layers, data.heads), np.nan)
    proxy = data.over_images("grad_importance", cls)[0]  # [L, H]
    layer, head = np.divmod(np.arange(data.layers * data.heads), data.heads)
    rho = data.proxy_agreement(signed, cls).of_means
    x = hv.Dimension("proxy", label="gradient proxy |∂CE/∂gate|")
    y = hv.Dimension("exact", label="exact ΔCE, whole head pruned" if signed else "exact |ΔCE|, whole head pruned")
    scatter = hv.Scatter({"proxy": proxy.ravel(), "exact": exact_mean.ravel(), "layer": layer, "head": head}, x,
                         [y, LAYER, HEAD])
    what = "n/a" if not np.isfinite(rho) else f"{rho:+.2f}"
    return styled(scatter, bokeh={"size": 7, "tools": ["hover", "tap"]}, mpl={"s": 14}, color="layer",
                  cmap=layer_colours(data.layers), title=f"proxy vs exact per head, {scope_text(data, None, cls)}: "
                                                         f"Spearman ρ of the means {what}")


ACCURACY = hv.Dimension("top1", label="top-1 accuracy", range=(0.0, 1.0))
PRUNED = hv.Dimension("pruned", label="heads pruned")
DEPTH = hv.Dimension("depth", label="relative depth (layer / (L − 1))", range=(0.0, 1.0))


def pruning_curves(result: dict) -> hv.Overlay:
    """A set's pruning curves (`Service.curve`'s result): top-1 against the heads pruned, one colour per ranking
    (exact, proxy, random), solid harmful-first and dashed harmless-first, as the app's panel draws them."""
    colour = {"exact": OKABE_ITO[0], "proxy": OKABE_ITO[1], "random": OKABE_ITO[7]}
    lines = []
    for order, ys in result["curves"].items():
        criterion, direction = curve_parts(order)
        dash = "dashed" if direction == "harmless-first" else "solid"
        lines.append(styled(hv.Curve((result["steps"], ys), PRUNED, ACCURACY, label=order),
                            color=colour.get(criterion, OKABE_ITO[2]), bokeh={"line_dash": dash},
                            mpl={"linewidth": 1.5, "linestyle": dash}))
    return styled(hv.Overlay(lines), title=f"pruning curves over {result['images']} images",
                  bokeh={"legend_position": "right"}, mpl={"legend_position": "right"})


def compare_trends(result: dict, names: tuple[str, str] = ("A", "B")) -> hv.Layout:
    """`vitscope.compare.compare()`'s per-layer mean distance and strength entropy of both models against relative
    depth (models of different depth on one axis), A solid and B dashed."""
    la, lb = result["layer_alignment"]["layers"]
    panels = []
    for key, dim in (("distance", DISTANCE), ("entropy", ENTROPY)):
        lines = []
        for k, (name, count, style) in enumerate(zip(names, (la, lb), ("solid", "dashed"), strict=True)):
            seen = {}
            for row in result["layers"]:
                seen.setdefault(row["layer"] if k == 0 else row["layer_b"], row[key][k])
            xs = [j / max(count - 1, 1) for j in seen]
            ys = [np.nan if v is None else v for v in seen.values()]
            lines.append(styled(hv.Curve((xs, ys), DEPTH, dim, label=name), color=OKABE_ITO[k],
                                bokeh={"line_dash": style}, mpl={"linestyle": style}))
        panels.append(styled(hv.Overlay(lines), title=f"{dim.label} by relative depth"))
    return hv.Layout(panels).cols(2)
