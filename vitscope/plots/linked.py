"""`linked(store)`: the figures as one notebook dashboard, linked by HoloViews streams instead of the app's Bokeh
callbacks.

One `Selection` (the app's: image, head, metric, mode, class, …) holds what is selected. Taps write it: an image in
the overview (Selection1D), a head on the importance line (Tap) or in the strength scatter (Selection1D), a head of an
image on the pattern map (Tap); each dependent figure is a DynamicMap redrawn from `Params` of the selection. Slower
than the served app, which pushes new arrays into figures built once (docs/performance.md has the ratio), but every
panel is the same pure function a paper figure is.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn

from vitscope.plots.palette import styled
from vitscope.plots.views import (
    entropy_distribution,
    head_importance,
    image_overview,
    instance_points,
    mode_bars,
    pattern_map,
    strength_scatter,
    strength_vector,
)
from vitscope.readout.importance import head_at
from vitscope.readout.palette import SELECTED
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import Store, store_data


class Linked(pn.viewable.Viewer):
    """The linked figures of one store: `.figures` (a HoloViews layout), `.selection`, and the streams the taps send
    into (`image_pick`, `head_tap`, `head_pick`, `map_tap`), so a test or a script can send the events a click does.
    Shown in a notebook (a Panel Viewer, as the app's `Explorer`): the metric and mode widgets above the figures."""

    def __init__(self, store: Store, selection: Selection | None = None) -> None:
        super().__init__()
        self.data = data = store_data(store)
        self.selection = c = selection or Selection()
        self.overview = image_overview(data)
        self._placed = np.asarray(self.overview.dimension_values("image"), dtype=int)
        self.image_pick = hv.streams.Selection1D(source=self.overview)
        self.image_pick.add_subscriber(self._on_image)

        def params(*names: str) -> hv.streams.Params:
            return hv.streams.Params(c, list(names))

        def marker(image: int | None) -> hv.Points:
            i = data.readable(image)
            xy = data.image_xy[[i]] if i is not None and np.isfinite(data.image_xy[i]).all() else np.empty((0, 2))
            return styled(hv.Points(xy, ["x", "y"]), bokeh={"size": 14, "fill_alpha": 0, "line_width": 2.5},
                          mpl={"s": 80, "facecolors": "none", "linewidth": 1.5}, color=SELECTED)

        self.marker = hv.DynamicMap(marker, streams=[params("image")])  # a ring on the chosen image
        self.overview_view = self.overview * self.marker
        self.importance = hv.DynamicMap(
            lambda image, metric, mode, cls: head_importance(data, metric, mode, image, cls),
            streams=[params("image", "metric", "mode", "cls")])
        self.head_tap = hv.streams.Tap(source=self.importance, x=None, y=None)
        self.head_tap.add_subscriber(self._on_head_tap)
        self.modes = hv.DynamicMap(lambda layer, head, image, metric, cls: mode_bars(data, layer, head, metric, image,
                                                                                      cls),
                                   streams=[params("layer", "head", "image", "metric", "cls")])
        self.strength = hv.DynamicMap(lambda image, cls: strength_scatter(data, image, cls),
                                      streams=[params("image", "cls")])
        self.head_pick = hv.streams.Selection1D(source=self.strength)
        self.head_pick.add_subscriber(self._on_head_pick)
        self.strength_vector = hv.DynamicMap(lambda layer, head, image, cls: strength_vector(data, layer, head, image,
                                                                                             cls),
                                             streams=[params("layer", "head", "image", "cls")])
        self.entropy = hv.DynamicMap(lambda layer, head, image: entropy_distribution(data, layer, head, image),
                                     streams=[params("layer", "head", "image")])
        self.map = pattern_map(data, "cls")  # datashaded: re-aggregated on zoom, whatever the number of heads
        self.instances = hv.DynamicMap(lambda layer, head: instance_points(data, "cls", layer, head),
                                       streams=[params("layer", "head")])
        self.map_tap = hv.streams.Tap(source=self.map, x=None, y=None)
        self.map_tap.add_subscriber(self._on_map_tap)
        self.figures = (self.overview_view + self.importance + self.modes + self.strength + self.strength_vector
                       + self.entropy + self.map * self.instances).opts(shared_axes=False).cols(3)

    # -- what a tap does ----------------------------------------------------------------------------------------

    def _on_image(self, index: list[int]) -> None:
        """A tapped overview point (its row) selects that image; an empty selection goes back to all images."""
        self.selection.image = int(self._placed[index[0]]) if index else None

    def _on_head_tap(self, x: float | None, y: float | None) -> None:
        """A tap on the importance line selects the head under it."""
        if x is not None:
            layer, head = head_at(self.data, x)
            self.selection.param.update(layer=layer, head=head)

    def _on_head_pick(self, index: list[int]) -> None:
        """A tapped head in the strength scatter (its row: layer × heads + head) selects it."""
        if index:
            self.selection.param.update(**dict(zip(("layer", "head"), divmod(int(index[0]), self.data.heads),
                                                strict=True)))

    def _on_map_tap(self, x: float | None, y: float | None) -> None:
        """A tap on the pattern map selects the nearest head of any image, and that image (as the app's map)."""
        got = None if x is None or y is None else self.data.nearest_head("cls", float(x), float(y))
        if got is not None:
            self.selection.param.update(**dict(zip(("image", "layer", "head"), got, strict=True)))

    def __panel__(self) -> pn.Column:
        widgets = pn.Param(self.selection, parameters=["metric", "mode"], show_name=False, default_layout=pn.Row)
        return pn.Column(widgets, pn.pane.HoloViews(self.figures, backend="bokeh"))


def linked(store: Store, **selection) -> Linked:
    """The notebook dashboard of a store: overview, head importance and modes, strength scatter, a head's strength
    vector and entropy distribution, linked by taps (`selection`: the initial image, layer, head, metric, …)."""
    return Linked(store, Selection(**selection))
