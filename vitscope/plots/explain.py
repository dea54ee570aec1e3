"""Where a decision comes from, as HoloViews elements: one image's patch maps over it, their faithfulness curves,
and the faithfulness benchmark over a sample.

Each takes the plain dicts `Service.explain` (`{"image", "target", "grid", "maps", "curves", "auc"}`) and
`Service.explain_set` (`{"images", "of", "mean_auc", "interval", "most_faithful"}`) return, so a figure does not
care whether the maps were computed just now or read back; only the thumbnail and the class names come from the
store.
"""

from __future__ import annotations

from collections.abc import Sequence

import holoviews as hv
import numpy as np

from vitscope.analysis.explain import FRACTIONS
from vitscope.errors import VitscopeError
from vitscope.plots.palette import CONTINUOUS, styled
from vitscope.readout.palette import DIVERGING, OKABE_ITO, SELECTED
from vitscope.readout.store_data import Store, StoreData, store_data
from vitscope.vocab import EXPLAIN_DIRECTIONS as DIRECTIONS
from vitscope.vocab import EXPLAIN_METHODS as METHODS

METHOD_COLOURS = dict(zip(METHODS, OKABE_ITO, strict=False))  # one Okabe–Ito colour per map, in every figure
REMOVED = hv.Dimension("removed", label="share of patches removed", range=(0.0, 0.9))
P_TARGET = hv.Dimension("p_target", label="P[target]")
IN_WORDS = {"most_relevant_first": "most relevant removed first",
            "least_relevant_first": "least relevant removed first"}
BEST = {"most_relevant_first": "lowest", "least_relevant_first": "highest"}  # the AUC of the most faithful map


def map_grid(explanation: dict, method: str) -> np.ndarray:
    """One map [N] as the [p, p] patch grid it covers, row-major (patch n at row n // p, column n % p)."""
    if method not in explanation["maps"]:
        raise VitscopeError(f"this explanation has no {method!r} map: it has {', '.join(explanation['maps'])}")
    rows, cols = (int(g) for g in explanation["grid"])
    values = np.asarray(explanation["maps"][method], dtype=np.float64)
    if values.size != rows * cols:
        raise VitscopeError(f"the {method!r} map has {values.size} values, not the {rows}×{cols} patches of its grid")
    return values.reshape(rows, cols)


def _scale(values: np.ndarray) -> dict:
    """Each map on its own scale (their units differ): a signed map (occlusion can raise P) diverging around 0."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if lo < 0:
        span = max(abs(lo), abs(hi), 1e-12)
        return {"cmap": list(DIVERGING), "clim": (-span, span)}
    return {"cmap": CONTINUOUS, "clim": (lo, hi if hi > lo else lo + 1e-12)}


def _of(data: StoreData, explanation: dict) -> str:
    image = explanation.get("image")
    target = explanation.get("target")
    who = "" if image is None else f"image {image}"
    if target is not None and 0 <= int(target) < len(data.class_names):
        who += f"{', ' if who else ''}target {data.class_names[int(target)]}"
    return who


def patch_map(store: Store, explanation: dict, method: str, alpha: float = 0.6) -> hv.Overlay:
    """The image's thumbnail with one map over it, semi-transparent: a patch's colour is its value on the map's own
    scale (patch n at grid row n // p, column n % p, as the model reads the image)."""
    data = store_data(store)
    image = data.check_image(int(explanation["image"]))
    grid = map_grid(explanation, method)
    thumb = data.thumbnail(image)
    bounds = (0, 0, thumb.shape[1], thumb.shape[0])
    rgb = hv.RGB(thumb, bounds=bounds, kdims=["x", "y"])
    value = hv.Dimension(method, label=f"{method} value")
    veil = styled(hv.Image(grid, bounds=bounds, kdims=["x", "y"], vdims=[value]), alpha=alpha, colorbar=True,
                  **_scale(grid))
    who = _of(data, explanation)
    return styled(rgb * veil, title=f"{method}{' — ' + who if who else ''}", xaxis=None, yaxis=None)


def patch_maps(store: Store, explanation: dict, methods: Sequence[str] | None = None) -> hv.Layout:
    """Small multiples: every map of the explanation (or `methods`) over the image, side by side."""
    chosen = list(explanation["maps"]) if methods is None else list(methods)
    if not chosen:
        raise VitscopeError("this explanation has no map to draw")
    return hv.Layout([patch_map(store, explanation, m) for m in chosen]).cols(len(chosen))


def faithfulness_curves(explanation: dict, store: Store | None = None) -> hv.Layout:
    """P[target] against the share of patches removed in each map's order, one colour per map, a panel per direction
    (most relevant first: a faithful map falls fast; least relevant first: it stays high), each map's AUC in the
    legend."""
    if "curves" not in explanation:
        raise VitscopeError("this explanation has no faithfulness curves (only its maps): compute it with "
                            "`Service.explain`")
    who = _of(store_data(store), explanation) if store is not None else ""
    panels = []
    for d in DIRECTIONS:
        lines = [styled(hv.Curve((FRACTIONS, np.asarray(curves[d], dtype=np.float64)), REMOVED, P_TARGET,
                                 label=f"{m} (AUC {explanation['auc'][m][d]:.3f})"),
                        color=METHOD_COLOURS.get(m, OKABE_ITO[7]), bokeh={"line_width": 2}, mpl={"linewidth": 1.5})
                 for m, curves in explanation["curves"].items()]
        panels.append(styled(hv.Overlay(lines), title=f"{IN_WORDS[d]}{' — ' + who if who else ''}",
                             bokeh={"legend_position": "top_right"}, mpl={"legend_position": "best"}))
    return hv.Layout(panels).cols(2)


def faithfulness_benchmark(result: dict) -> hv.Layout:
    """`Service.explain_set`'s benchmark: per direction each map's mean AUC with its 95 % bootstrap interval as error
    bars, the most faithful map starred (the lowest AUC most relevant first, the highest least relevant first)."""
    methods = list(result["mean_auc"])
    x = np.arange(len(methods), dtype=float)
    where = hv.Dimension("map", label="map", range=(-0.5, len(methods) - 0.5))
    auc = hv.Dimension("mean_auc", label=f"mean AUC of P[target], {len(result['images'])} images")
    panels = []
    for d in DIRECTIONS:
        mean = np.array([result["mean_auc"][m][d] for m in methods], dtype=np.float64)
        lo, hi = (np.array([result["interval"][m][d][k] for m in methods], dtype=np.float64) for k in (0, 1))
        bars = styled(hv.ErrorBars((x, mean, mean - lo, hi - mean), where, [auc, "below", "above"]),
                      color="#333333")
        dots = [styled(hv.Scatter(([x[k]], [mean[k]]), where, auc, label=m),
                       color=METHOD_COLOURS.get(m, OKABE_ITO[7]), bokeh={"size": 8}, mpl={"s": 30})
                for k, m in enumerate(methods)]
        best = methods.index(result["most_faithful"][d])
        star = styled(hv.Scatter(([x[best]], [mean[best]]), where, auc, label="most faithful"), color=SELECTED,
                      marker="*", bokeh={"size": 16}, mpl={"s": 160})
        title = f"{d.replace('_', ' ')} — {BEST[d]}: {methods[best]}"
        panels.append(styled(hv.Overlay([bars, *dots, star]), xticks=[(k, m) for k, m in enumerate(methods)],
                             title=title, show_legend=False))
    return hv.Layout(panels).cols(2)
