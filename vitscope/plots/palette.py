"""The HoloViews side of the one palette (`vitscope.readout.palette`): the dimensions every figure names the same way,
and options for both backends at once (`styled`)."""

from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the bokeh options (the notebook's backend: current)
import holoviews.plotting.mpl  # noqa: F401 - and matplotlib's (print: `render`), so an element carries both

from vitscope.readout.palette import VALUE_RAMP
from vitscope.vocab import METRIC_LABELS

CONTINUOUS = list(VALUE_RAMP)  # values (P[true], importance, attention): the app's ramp


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
