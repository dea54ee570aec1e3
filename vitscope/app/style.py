"""Colours and sizes shared by all views, so a layer has the same colour everywhere."""

from __future__ import annotations

import colorcet
import panel as pn

CLS_COLOUR = "#1f77b4"  # CLS-related attention (blue, as in the paper)
PATCH_COLOUR = "#ff7f0e"  # patch-to-patch attention (orange)
SELECTED = "#d62728"
PLOT = dict(responsive=True, min_height=260, toolbar="above", fontscale=1.0, shared_axes=False)


def layer_colours(layers: int) -> list[str]:
    """One colour per layer along blue → green → yellow → red (early → late), readable on white."""
    cmap = colorcet.b_rainbow_bgyr_35_85_c72
    step = (len(cmap) - 1) / max(layers - 1, 1)
    return [cmap[int(round(i * step))] for i in range(layers)]


def class_colours(classes: int) -> list[str]:
    palette = colorcet.b_glasbey_category10
    return [palette[i % len(palette)] for i in range(classes)]


def pane(obj, **params) -> pn.pane.HoloViews:
    """A plot pane with axes of its own: Panel otherwise links every pane's axes that share a dimension name
    (all views have an x and a y), and one view's zoom or range would move another's."""
    return pn.pane.HoloViews(obj, linked_axes=False, **params)
