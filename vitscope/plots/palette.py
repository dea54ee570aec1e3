"""Colour-blind-safe colours for the HoloViews figures (print and notebook), and the dimensions they share.

The served app keeps its own colours (`app/style.py`); figures for a paper are read in grey and by readers with a
colour-vision deficiency, so here: Okabe–Ito for categories, cividis for values, a protan/deutan-safe ramp for
layers (early dark blue → late yellow).
"""

from __future__ import annotations

import colorcet
import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the bokeh options (the notebook's backend: current)
import holoviews.plotting.mpl  # noqa: F401 - and matplotlib's (print: `render`), so an element carries both
import numpy as np

from vitscope.vocab import METRIC_LABELS

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
CONTINUOUS = "cividis"  # values (P[true], importance, attention)
CORRECT, WRONG = OKABE_ITO[2], OKABE_ITO[5]  # bluish green, vermillion
SELECTED = OKABE_ITO[5]
CLS, PATCH = OKABE_ITO[0], OKABE_ITO[1]  # CLS-related vs patch→patch attention (the app's blue / orange)


def layer_colours(layers: int) -> list[str]:
    """One colour per layer along a ramp safe for protanopes and deuteranopes, its darkest and lightest ends cut."""
    ramp = colorcet.b_linear_protanopic_deuteranopic_kbjyw_5_95_c25
    at = np.linspace(0.15, 0.85, max(layers, 1)) * (len(ramp) - 1)
    return [ramp[int(round(i))] for i in at][:layers]


def class_colours(classes: int) -> list[str]:
    """Okabe–Ito up to 8 classes, then glasbey (distinct, not all tellable apart: many classes need a legend)."""
    palette = OKABE_ITO if classes <= len(OKABE_ITO) else colorcet.b_glasbey_category10
    return [palette[i % len(palette)] for i in range(classes)]


# The dimensions every figure names the same way (HoloViews links axes of equal dimensions across a layout).
LAYER = hv.Dimension("layer", label="layer")
HEAD = hv.Dimension("head", label="head")
FLAT_HEAD = hv.Dimension("flat_head", label="head (layer × heads + head)")
HOP = hv.Dimension("hop", label="k-hop neighbours", unit="patches")
ENTROPY = hv.Dimension("strength_entropy", label="strength entropy", range=(0.0, 1.0))
DISTANCE = hv.Dimension("attention_distance", label="mean attention distance", unit="patches")
STRENGTH = hv.Dimension("strength", label="attention strength")
SHARE = hv.Dimension("share", label="share of images")
SOURCE = hv.Dimension("source", label="source token (0 = CLS)")
TARGET = hv.Dimension("target", label="target token (0 = CLS)")
ATTENTION = hv.Dimension("attention", label="attention A[s, t]")


def metric_dim(metric: str) -> hv.Dimension:
    """The value dimension of an importance metric, labelled as the app labels it."""
    return hv.Dimension(metric, label=METRIC_LABELS.get(metric, metric), value_format=lambda v: f"{v:.3g}")


def styled(element: hv.core.Dimensioned, bokeh: dict | None = None, mpl: dict | None = None,
           **both) -> hv.core.Dimensioned:
    """`element` with options for both backends: `both` (same name in each), then each backend's own (sizes and
    line widths are spelled differently; hover and tap exist in bokeh only). Figures look alike in a notebook
    (bokeh) and in print (`render`, matplotlib) without the caller choosing a backend first."""
    if "title" in both:  # HoloViews formats titles (`{label}`): braces in a class name are text
        both["title"] = both["title"].replace("{", "{{").replace("}", "}}")
    element = element.opts(backend="bokeh", **both, **(bokeh or {}))
    return element.opts(backend="matplotlib", **both, **(mpl or {}))
