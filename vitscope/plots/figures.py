"""How each figure of the registry (`vitscope.readout.figures.FIGURES`) is drawn: one HoloViews maker per name, for
a store, an image and a head (what `render` saves, the notebook shows and the report lays out)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import holoviews as hv
import numpy as np

from vitscope.plots import effects, explain, summaries, views
from vitscope.plots.render import render
from vitscope.readout.figures import FIGURES, Target, target
from vitscope.readout.store_data import Store

MAKERS: dict[str, Callable[[Target], hv.core.Dimensioned]] = {
    "importance": lambda t: views.head_importance(t.data, image=t.image),
    "modes": lambda t: views.mode_bars(t.data, t.layer, t.head, image=t.image),
    "strength": lambda t: views.strength_scatter(t.data, image=t.image),
    "strength-vector": lambda t: views.strength_vector(t.data, t.layer, t.head, image=t.image),
    "entropy": lambda t: views.entropy_distribution(t.data, t.layer, t.head, image=t.image),
    "overview": lambda t: views.image_overview(t.data),
    "pattern-map": lambda t: views.pattern_map(t.data, layer=t.layer, head=t.head, dynamic=False),
    "binary-map": lambda t: views.binary_map(t.data, t.image, t.layer, t.head),
    "heatmap": lambda t: views.attention_heatmap(t.attention, t.layer, t.head, t.data.num_prefix),
    "two-axes": lambda t: views.two_axes(t.attention, t.layer, t.head, t.data.num_prefix, t.data.top),
    "masks": lambda t: views.masks(t.data, t.attention, t.image, t.layer, t.head, binarise=False),
    "explain-maps": lambda t: explain.patch_maps(t.data, t.explain),
    "explain-curves": lambda t: explain.faithfulness_curves(t.explain, t.data),
    "importance-matrix": lambda t: summaries.importance_matrix(t.data),
    "layer-trends": lambda t: summaries.layer_trends(t.data),
    "pattern-kinds": lambda t: summaries.pattern_kind_matrix(t.data),
    "proxy-vs-exact": lambda t: summaries.proxy_vs_exact(t.data),
    "direct-vs-total": lambda t: effects.direct_vs_total(t.data, image=t.image),
    "proxy-table": lambda t: effects.proxy_agreement(t.data, image=t.image),
}
if MAKERS.keys() != FIGURES.keys():  # the registry and its makers are one list: a figure added to one needs the other
    raise ImportError(f"vitscope.plots draws {sorted(MAKERS)}, the registry names {sorted(FIGURES)}")


def build(name: str, store: Store, image: int | None = None, layer: int = 0, head: int = 0,
          attention: np.ndarray | None = None, explain: dict | None = None) -> hv.core.Dimensioned:
    """The element of figure `name` for a store (path or StoreData), image, head and, where it needs one, the
    image's attention [L, H, P, P] or its explanation (`Service.explain`'s dict); a missing input or an unknown
    name is one line (VitscopeError)."""
    checked = target(name, store, image, layer, head, attention, explain)
    return MAKERS[name](checked)


def print_file(element: hv.core.Dimensioned, dest: str | Path | BinaryIO, fmt: str) -> Path | BinaryIO:
    """`render` of a figure: side-by-side panels get a page's width (HoloViews would shrink each to a third of one
    figure's width)."""
    size = (3.3 * len(element), 3.0) if isinstance(element, hv.Layout) else None
    with warnings.catch_warnings():  # matplotlib's legend of more classes than it shows: said in the title
        warnings.filterwarnings("ignore", "Mismatched number of handles and labels")
        return render(element, dest, fmt, size=size)


def figure_file(name: str, fmt: str, t: Target) -> bytes:
    """Figure `name` of a checked target as a print file's content (svg, pdf or png): the app's "save figure"."""
    return print_file(MAKERS[name](t), io.BytesIO(), fmt).getvalue()
