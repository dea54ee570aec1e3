"""vitscope's views and store summaries as HoloViews elements, for notebooks and paper figures.

The served app draws plain Bokeh for speed; here every view is a pure function from store data (a `StoreData` or
a store path) plus options to a HoloViews element, built on the same data functions as the app, so the elements
compose (`+`, `*`), carry labelled dimensions and render with either backend. `render` saves one for print,
`FIGURES` names them all, `linked` links them in a notebook with HoloViews streams.
"""

from __future__ import annotations

from vitscope.plots.effects import direct_vs_total, proxy_agreement
from vitscope.plots.explain import faithfulness_benchmark, faithfulness_curves, patch_map, patch_maps
from vitscope.plots.figures import build, figure_file
from vitscope.plots.linked import Linked, linked
from vitscope.plots.render import FORMATS, render
from vitscope.plots.summaries import (
    compare_trends,
    importance_matrix,
    layer_trends,
    pattern_kind_matrix,
    proxy_vs_exact,
    pruning_curves,
)
from vitscope.plots.views import (
    attention_heatmap,
    binary_map,
    entropy_distribution,
    head_importance,
    head_points_all,
    image_overview,
    instance_points,
    masks,
    mode_bars,
    pattern_map,
    strength_scatter,
    strength_vector,
    two_axes,
)
from vitscope.readout.figures import FIGURES
from vitscope.readout.store_data import store_data

__all__ = [
    # the views (views.py)
    "image_overview", "head_importance", "mode_bars", "strength_scatter", "strength_vector", "entropy_distribution",
    "head_points_all", "pattern_map", "instance_points", "attention_heatmap", "two_axes", "masks", "binary_map",
    # the store summaries (summaries.py)
    "importance_matrix", "layer_trends", "pattern_kind_matrix", "proxy_vs_exact", "pruning_curves", "compare_trends",
    # the heads' effects on the logit and the proxies against exact pruning (effects.py)
    "direct_vs_total", "proxy_agreement",
    # where a decision comes from (explain.py)
    "patch_map", "patch_maps", "faithfulness_curves", "faithfulness_benchmark",
    # print (render.py), the registry (vitscope.readout.figures) and its drawing (figures.py), the dashboard (linked.py)
    "render", "FORMATS", "FIGURES", "build", "figure_file", "linked", "Linked", "store_data",
]
