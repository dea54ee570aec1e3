"""The app's views as HoloViews elements: one pure function per view, from store data (plus options) to an element.

Each reads its numbers through the same functions the served app's Bokeh views use (`vitscope.readout`), so a
figure in a paper shows what the app shows. Image ids and class names are data: they
appear only as text (titles, hover values), never as markup.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
from holoviews.operation.datashader import datashade

from vitscope.analysis.binary import unpack_binary
from vitscope.plots.palette import (
    ATTENTION,
    CONTINUOUS,
    DISTANCE,
    ENTROPY,
    FLAT_HEAD,
    HEAD,
    HOP,
    LAYER,
    SHARE,
    SOURCE,
    STRENGTH,
    TARGET,
    metric_dim,
    styled,
)
from vitscope.readout.attention import lines, token_masks, top_threshold
from vitscope.readout.importance import importance_values, mode_values
from vitscope.readout.palette import CLS, CORRECT, PATCH, SELECTED, WRONG, class_colours, layer_colours
from vitscope.readout.pattern_map import head_instances
from vitscope.readout.selection import COLOUR_BY
from vitscope.readout.store_data import ENTROPY_BINS, Store, StoreData, store_data
from vitscope.readout.strength import head_points, head_x
from vitscope.vocab import DEFAULT_METRIC, MODE_NAMES, MODES, WHOLE_HEAD, head_name


def scope_text(data: StoreData, image: int | None, cls: int | None) -> str:
    """Whose values a figure shows, in words (the app's titles say the same)."""
    if data.readable(image) is not None:
        return f"image {image}"
    return "mean of all images" if cls is None else f"mean of class {data.class_names[cls]}"


# -- Image Overview -----------------------------------------------------------------------------------------


def image_overview(store: Store, colour_by: str = "class", cls: int | None = None) -> hv.Points:
    """All placed images on the tSNE of their head-importance vectors (paper Fig. 1 A), coloured by class, by
    whether the unpruned top-1 is right, or by P[true]; with `cls` only that class's images."""
    data = store_data(store)
    if colour_by not in COLOUR_BY:
        raise ValueError(f"colour_by must be one of {COLOUR_BY}, not {colour_by!r}")
    ok = data.placed
    if cls is not None:
        ok = ok[data.label[ok] == cls]
    label = data.label[ok]
    table = {
        "x": data.image_xy[ok, 0], "y": data.image_xy[ok, 1], "image": ok,
        "image_id": np.asarray([data.image_ids[i] for i in ok], dtype=object),
        "class": np.asarray([data.class_names[int(c)] for c in label], dtype=object),
        "correct": np.where(data.correct[ok], "top-1 right", "top-1 wrong").astype(object),
        "p_true": data.baseline_prob[ok].astype(float),
    }
    vdims = [hv.Dimension("image"), hv.Dimension("image_id", label="image id"), hv.Dimension("class"),
             hv.Dimension("correct", label="unpruned top-1"), hv.Dimension("p_true", label="P[true]", range=(0, 1))]
    title = f"Image Overview — {len(ok)} images by {colour_by}"
    points = hv.Points(table, kdims=[hv.Dimension("x", label="tSNE x"), hv.Dimension("y", label="tSNE y")],
                       vdims=vdims, label="images")
    if colour_by == "class":
        present = data.classes_present
        colours = dict(zip((data.class_names[c] for c in present), class_colours(len(present)), strict=True))
        colour = {"color": "class", "cmap": colours, "show_legend": len(present) <= 20}
    elif colour_by == "correct":
        colour = {"color": "correct", "cmap": {"top-1 right": CORRECT, "top-1 wrong": WRONG}}
    else:
        colour = {"color": "p_true", "cmap": CONTINUOUS, "colorbar": True, "clim": (0.0, 1.0)}
    return styled(points, bokeh={"size": 4, "tools": ["hover", "tap"]}, mpl={"s": 6}, title=title, alpha=0.8,
                  xaxis=None, yaxis=None, **colour)


# -- Head Importance View -----------------------------------------------------------------------------------


def head_importance(store: Store, metric: str = DEFAULT_METRIC, mode: int = WHOLE_HEAD, image: int | None = None,
                    cls: int | None = None) -> hv.Overlay:
    """One metric over every head (paper Fig. 1 B): an image's, or the mean ± std over all images (or a class) as a
    band; a head's dot is coloured by its layer."""
    data = store_data(store)
    y, std = importance_values(data, metric, mode, image, cls)
    flat = np.arange(len(y))
    layer, head = np.divmod(flat, data.heads)
    value = metric_dim(metric)
    curve = styled(hv.Curve((flat, y), FLAT_HEAD, value), bokeh={"line_width": 1}, mpl={"linewidth": 0.8},
                   color="#333333")
    dots = styled(hv.Scatter({"flat_head": flat, metric: y, "layer": layer, "head": head}, FLAT_HEAD,
                             [value, LAYER, HEAD]), bokeh={"size": 5, "tools": ["hover", "tap"]}, mpl={"s": 8},
                  color="layer", cmap=layer_colours(data.layers))
    parts = [curve, dots]
    if std is not None:
        spread = hv.Spread((flat, y, std), FLAT_HEAD, [value, hv.Dimension("std", label="± std")])
        parts.insert(0, styled(spread, bokeh={"color": "#888888", "line_alpha": 0},
                               mpl={"color": "#888888", "facecolor": "#888888", "linewidth": 0}, alpha=0.3))
    title = f"Head importance — {value.label}, {scope_text(data, image, cls)}, mode {mode} ({MODE_NAMES[mode]})"
    return styled(hv.Overlay(parts), title=title)


def mode_bars(store: Store, layer: int, head: int, metric: str = DEFAULT_METRIC, image: int | None = None,
              cls: int | None = None) -> hv.Bars:
    """One head's metric in the six pruning modes (0: the unpruned model): which region of its attention matters."""
    data = store_data(store)
    vals = mode_values(data, metric, layer, head, image, cls)
    mode = hv.Dimension("mode", label="pruning mode")
    return styled(hv.Bars((list(MODES), vals), mode, metric_dim(metric)), color=layer_colours(data.layers)[layer],
                  title=f"{head_name(layer, head)} in modes 0–5, {scope_text(data, image, cls)}")


# -- Attention Strength View --------------------------------------------------------------------------------


def strength_scatter(store: Store, image: int | None = None, cls: int | None = None) -> hv.Scatter:
    """Every head by strength entropy across layers (paper Fig. 1 C1): low = local attention, high = global; a
    layer's heads spread across its column."""
    data = store_data(store)
    cols = head_points(data, image, cls)
    layer, head = np.divmod(np.arange(data.layers * data.heads), data.heads)
    x = hv.Dimension("x", label="layer", range=(-0.5, data.layers - 0.5))
    scatter = hv.Scatter({"x": head_x(data.layers, data.heads), "strength_entropy": cols["y"],
                          "attention_distance": cols["distance"], "layer": layer, "head": head},
                         x, [ENTROPY, DISTANCE, LAYER, HEAD])
    return styled(scatter, bokeh={"size": 6, "tools": ["hover", "tap"]}, mpl={"s": 12}, color="layer",
                  cmap=layer_colours(data.layers), xticks=[(i, str(i)) for i in range(data.layers)],
                  title=f"Attention strength — {scope_text(data, image, cls)}")


def strength_vector(store: Store, layer: int, head: int, image: int | None = None,
                    cls: int | None = None) -> hv.Bars:
    """A head's k-hop attention strength S_k (paper Fig. 1 C2): how much it attends at each Chebyshev distance."""
    data = store_data(store)
    vals = data.image_or_mean("strength", image, cls)[layer, head]
    return styled(hv.Bars((np.arange(len(vals)), vals), HOP, STRENGTH), color=layer_colours(data.layers)[layer],
                  title=f"k-hop attention strength — {head_name(layer, head)}, {scope_text(data, image, cls)}")


def entropy_distribution(store: Store, layer: int, head: int, image: int | None = None) -> hv.Overlay:
    """A head's strength entropy over all readable images (paper Fig. 1 C3), the image's value marked: does the
    head attend as locally in every image?"""
    data = store_data(store)
    share = data.entropy_histogram(layer, head) / max(int(data.valid.sum()), 1)
    hist = styled(hv.Histogram((ENTROPY_BINS, share), kdims=[ENTROPY], vdims=[SHARE]), bokeh={"line_alpha": 0},
                  mpl={"linewidth": 0}, color=layer_colours(data.layers)[layer])
    parts = [hist]
    title = f"strength entropy over images — {head_name(layer, head)}"
    if data.readable(image) is not None:
        value = float(data.strength_entropy[image, layer, head])
        parts.append(styled(hv.VLine(value, kdims=[ENTROPY, SHARE]), bokeh={"line_width": 2}, mpl={"linewidth": 1.5},
                            color=SELECTED))
        title += f" (image {image}: {value:.2f})"
    return styled(hv.Overlay(parts), title=title)


# -- Attention Pattern View ---------------------------------------------------------------------------------


def head_points_all(store: Store, kind: str = "cls") -> hv.Points:
    """Every (image, layer, head) on a head layout (`cls`: CLS attention, `patch`: pattern latent): the points the
    pattern map aggregates (up to 10⁶ and more)."""
    data = store_data(store)
    return hv.Points(data.head_frame(kind), [hv.Dimension("x", label=f"{kind} tSNE x"),
                                             hv.Dimension("y", label=f"{kind} tSNE y")], ["layer", "image", "head"])


def pattern_map(store: Store, kind: str = "cls", layer: int | None = None, head: int | None = None,
                dynamic: bool = True, size: int = 400) -> hv.Overlay | hv.DynamicMap:
    """All heads of all images on a head layout (paper Fig. 1 D1), datashaded and coloured by layer so that 10⁶
    points stay one image; with (layer, head), that head's instances across images on top (Fig. 12).
    `dynamic=False` aggregates once at `size` pixels (for a static figure); else it re-aggregates on zoom."""
    import datashader as ds

    data = store_data(store)
    key = dict(zip(range(data.layers), layer_colours(data.layers), strict=True))
    x0, y0, x1, y1 = data.bounds(kind)
    shaded = datashade(head_points_all(data, kind), aggregator=ds.count_cat("layer"), color_key=key,
                       dynamic=dynamic, width=size, height=size, x_range=(x0, x1), y_range=(y0, y1),
                       min_alpha=110)
    shaded = styled(shaded, xaxis=None, yaxis=None, title=f"Attention pattern map — {kind} layout")
    if layer is None or head is None:
        return shaded
    mine = instance_points(data, kind, layer, head)
    return styled(shaded * mine, title=f"Attention pattern map — {kind} layout, {head_name(layer, head)}")


def instance_points(store: Store, kind: str, layer: int, head: int) -> hv.Points:
    """One (layer, head) in every readable image of a head layout: where the head lies across images (Fig. 12)."""
    x, y = head_instances(store_data(store), kind, layer, head)
    return styled(hv.Points((x, y), ["x", "y"], label=head_name(layer, head)), bokeh={"size": 3}, mpl={"s": 3},
                  color=SELECTED, alpha=0.5)


def _head_matrix(attention: np.ndarray, layer: int, head: int) -> np.ndarray:
    A = np.asarray(attention, dtype=np.float32)
    if A.ndim != 4 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"attention must be [L, H, P, P], not {A.shape}")
    return A[layer, head]


def attention_heatmap(attention: np.ndarray, layer: int, head: int, prefix: int = 1) -> hv.Image:
    """One head's attention matrix on one image (paper Fig. 1 D4): rows are source tokens, columns targets, the
    `prefix` tokens (CLS, …) first. `attention` is [L, H, P, P], e.g. `Service.attention(image)`."""
    A = _head_matrix(attention, layer, head)
    P = A.shape[0]
    return styled(hv.Image((np.arange(P), np.arange(P), A), [TARGET, SOURCE], ATTENTION), cmap=CONTINUOUS,
                  colorbar=True, invert_yaxis=True, aspect="equal",
                  title=f"{head_name(layer, head)}: A (rows source, columns target; {prefix} prefix)")


def two_axes(attention: np.ndarray, layer: int, head: int, prefix: int = 1, top: float = 0.01,
             threshold: float | None = None) -> hv.Segments:
    """The two-axes view (paper Fig. 1 D3): a line from source token s (top) to target t (bottom) for every
    A[s, t] above the threshold (default: the value above which the store's binarised top fraction lies); CLS-
    related lines blue, patch→patch orange, at most the strongest 20 000."""
    A = _head_matrix(attention, layer, head)
    cut = top_threshold(A, top, prefix) if threshold is None else float(threshold)
    seg = lines(A, cut, prefix)
    kind = np.where((seg["source"] < prefix) | (seg["target"] < prefix), "CLS-related", "patch→patch")
    token = hv.Dimension("token", label="token (0 = CLS, then patches)", range=(-1, A.shape[0]))
    side = hv.Dimension("side", label="source (1) → target (0)", range=(-0.2, 1.2))
    table = {"token": seg["x0"], "side": seg["y0"], "token_end": seg["x1"], "side_end": seg["y1"],
             "attention": seg["value"], "kind": kind.astype(object)}
    segments = hv.Segments(table, [token, side, "token_end", "side_end"], [ATTENTION, "kind"])
    return styled(segments, color="kind", cmap={"CLS-related": CLS, "patch→patch": PATCH}, alpha=0.6,
                  yticks=[(0, "target"), (1, "source")],
                  title=f"two axes — {head_name(layer, head)}: {len(seg['value'])} values > {cut:.3g}")


def masks(store: Store, attention: np.ndarray, image: int, layer: int, head: int, source: int = 0,
          target: int = 0, binarise: bool = True, top: float | None = None) -> hv.Layout:
    """The image under a token's source mask (what `source` attends to) and target mask (what attends to
    `target`), paper Fig. 1 D2; binarised at the store's cut (the value above which its top fraction of the head's
    patch→patch values lies, or `top`'s): a patch token's row and column of the binarised map. Else graded, as the
    app dims (a CLS row is on another scale than the patch block and often has no value above the cut). A patch
    outside the mask is dimmed."""
    data = store_data(store)
    A = _head_matrix(attention, layer, head)
    src, tgt = token_masks(A, source, target, data.num_prefix, data.grid)
    cut = top_threshold(A, data.top if top is None else top, data.num_prefix) if binarise else None
    thumb = data.thumbnail(data.check_image(image))
    h, w = thumb.shape[:2]
    bounds = (0, 0, w, h)
    panels = []
    for name, mask in ((f"source mask of token {source}", src), (f"target mask of token {target}", tgt)):
        shown = (mask > cut).astype(float) if cut is not None else mask / max(float(mask.max()), 1e-12)
        rgb = hv.RGB(thumb, bounds=bounds, kdims=["x", "y"])
        veil = styled(hv.Image(1.0 - shown, bounds=bounds, kdims=["x", "y"], vdims=["dimmed"]),
                      cmap=["#00000000", "#000000c0"], clim=(0, 1))  # kept patches clear, the rest dimmed
        panels.append(styled(rgb * veil, title=f"{head_name(layer, head)} {name}", xaxis=None, yaxis=None))
    return hv.Layout(panels).cols(2)


def binary_map(store: Store, image: int, layer: int, head: int) -> hv.Image:
    """A head's binarised map as the store keeps it (`binary_index`: its top fraction of patch→patch values set
    to 1), the input of the pattern labels; needs no model."""
    data = store_data(store)
    data.check_image(image)
    size = data.binary_size
    index = data.ds["binary_index"][image, layer, head].values
    B = unpack_binary(index, size).numpy().astype(float)
    image_el = hv.Image((np.arange(size), np.arange(size), B), [hv.Dimension("target", label="target patch"),
                                                             hv.Dimension("source", label="source patch")],
                    hv.Dimension("binary", label="in the top fraction"))
    return styled(image_el, cmap=["#ffffff", "#000000"], invert_yaxis=True, aspect="equal",
                  title=f"binarised map — {head_name(layer, head)}, image {image}")
