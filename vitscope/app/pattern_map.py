"""The Attention Pattern View's overview (paper Fig. 1 D1, Fig. 12): every head of every image on the CLS
or patch-pattern tSNE, aggregated by datashader and coloured by layer, re-aggregated on every zoom and pan.

On top: the selected image's heads (dots coloured by layer), the selected head (ring), and where the
selected (layer, head) lies across all images (its instances as small dots with density contours, Fig.
12 C–R); optionally the contours of all heads' density. A tap picks the nearest head of any image.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import cache

import datashader as ds
import datashader.transfer_functions as tf
import numpy as np
import pandas as pd
from bokeh.events import RangesUpdate, Tap
from bokeh.models import ColumnDataSource, HoverTool, Label

from vitscope.app.session import guarded, poll_layouts
from vitscope.app.style import figure
from vitscope.readout.palette import SELECTED, layer_colours
from vitscope.readout.pattern_map import ALL_LEVELS, HEAD_LEVELS, contour_lines, head_instances, image_heads
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData

_recent: OrderedDict[tuple, tuple[pd.DataFrame, np.ndarray]] = OrderedDict()  # the last aggregations, all stores
_recent_lock = threading.Lock()  # sessions may run on Panel's thread pool (--threads)


@cache
def _spread_compiled() -> None:
    """datashader compiles its spreading kernel (numba) the first time an image is spread, which a map needs only
    when zoomed in far enough for its points to be sparse: seconds inside that zoom's callback, on the server's event
    loop. Compiled here instead, with the first aggregation (the page's first draw)."""
    one = pd.DataFrame({"x": [0.5], "y": [0.5], "layer": pd.Categorical([0], categories=[0])})
    agg = ds.Canvas(plot_width=4, plot_height=4, x_range=(0, 1), y_range=(0, 1)).points(one, "x", "y",
                                                                                      ds.count_cat("layer"))
    tf.spread(tf.shade(agg, color_key={0: "#000000"}, min_alpha=110), px=1)


def aggregate(data: StoreData, kind: str, x_range: tuple[float, float], y_range: tuple[float, float],
              width: int, height: int) -> np.ndarray:
    """[height, width] uint32 RGBA (row 0 = bottom): all heads of a layout counted per pixel and per layer,
    each pixel the mix of its layers' colours (datashader `count_cat`), lone heads spread to stay visible."""
    _spread_compiled()
    frame = data.head_frame(kind)
    key = (id(frame), tuple(map(float, x_range)), tuple(map(float, y_range)), width, height)
    with _recent_lock:
        if key in _recent:  # the full extent: every session's first draw, every reset and change of layout
            _recent.move_to_end(key)
            return _recent[key][1]
    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
    agg = canvas.points(frame, "x", "y", ds.count_cat("layer"))
    colours = dict(zip(range(data.layers), layer_colours(data.layers), strict=True))
    img = tf.dynspread(tf.shade(agg, color_key=colours, how="eq_hist", min_alpha=110), threshold=0.5, max_px=3)
    out = np.asarray(img.data, dtype=np.uint32)
    out.flags.writeable = False  # shared by the sessions that ask for the same ranges
    with _recent_lock:
        _recent[key] = (frame, out)  # the frame: its id stays its own while it is kept (a new layout: a new frame)
        while len(_recent) > 16:
            _recent.popitem(last=False)
    return out


class PatternMap:
    """The map figure; `update` follows the selection, `reaggregate` the figure's ranges."""

    watches = ("image", "layer", "head", "layout", "density")

    def __init__(self, data: StoreData, sel: Selection, size: int = 340,
                 raster: ColumnDataSource | None = None) -> None:
        """`raster`: another map's aggregated image to share (export draws one map per head tab; the image of
        all heads is the same in each, so it is aggregated and written into the file once)."""
        self.data, self.sel, self.size = data, sel, size
        self.kind = sel.layout
        x0, y0, x1, y1 = data.bounds(self.kind)
        fig = figure("Attention Pattern View — all heads", size, size, name="vs-map-fig",
                     tools="pan,wheel_zoom,reset",
                     x_range=(x0, x1), y_range=(y0, y1), bare=True)
        shared = raster is not None
        self.raster = raster if shared else ColumnDataSource({"image": [np.zeros((size, size), np.uint32)], "x": [x0],
                                                              "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]},
                                                             name="vs-raster")
        fig.image_rgba("image", x="x", y="y", dw="dw", dh="dh", source=self.raster)
        self.all_contours = ColumnDataSource({"xs": [], "ys": []})
        fig.multi_line("xs", "ys", source=self.all_contours, color="#555555", line_width=1)
        self.instances = ColumnDataSource({"x": [], "y": []})
        fig.scatter("x", "y", source=self.instances, size=2.5, color=SELECTED, alpha=0.3, line_color=None)
        self.head_contours = ColumnDataSource({"xs": [], "ys": []})
        fig.multi_line("xs", "ys", source=self.head_contours, color=SELECTED, line_width=1.5)
        # what follows the image is drawn on the overlay canvas: an image change repaints it, not the map, the head's
        # instances in every image (10,000 points at 10k) and its contours under it
        self.heads = ColumnDataSource(image_heads(data, self.kind, None))
        dots = fig.scatter("x", "y", source=self.heads, color="colour", size=8, line_color="black", line_width=0.5,
                           level="overlay")
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[("head", "L@layer H@head")]))
        self.ring = ColumnDataSource({"x": [], "y": []})
        fig.scatter("x", "y", source=self.ring, size=16, fill_alpha=0, line_color=SELECTED, line_width=2.5,
                    level="overlay")
        fig.on_event(Tap, guarded(sel, "head tap", lambda e: self.pick(e.x, e.y)))
        fig.on_event(RangesUpdate, guarded(sel, "map zoom", lambda e: self.reaggregate((e.x0, e.x1), (e.y0, e.y1))))
        self.note = Label(x=size / 2, y=size / 2, x_units="screen", y_units="screen", text="", text_align="center",
                          text_font_size="13px", text_color="#666666")  # "computing layout…" until it is in
        fig.add_layout(self.note)
        self.figure = fig
        if not shared:
            self.reaggregate((x0, x1), (y0, y1))
        self.update()
        self._poll = poll_layouts(data, {"head_xy_cls", "head_xy_patch"}, self.layouts_arrived,
                                  lambda line: setattr(sel, "message", line))

    def layouts_arrived(self, names: set[str]) -> None:
        """A head layout was computed after this page opened: the shown one is drawn afresh at its extent."""
        if f"head_xy_{self.kind}" in names:
            self.kind = None  # `update` then sets the ranges and aggregates as for a change of layout
            self.update()
        self.note.text = self.data.layout_note(f"head_xy_{self.kind}")

    def pick(self, x: float | None, y: float | None) -> tuple[int, int, int] | None:
        """Select the head nearest to (x, y) in the current layout (KD-tree) and return (image, layer, head)."""
        if x is None or y is None:
            return None
        got = self.data.nearest_head(self.sel.layout, float(x), float(y))
        if got is None:  # the layout is still being computed
            return None
        image, layer, head = got
        self.sel.param.update(image=image, layer=layer, head=head)
        return got

    def reaggregate(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        """Datashade the current layout into the visible ranges at the figure's pixel size."""
        if None in (*x_range, *y_range) or x_range[1] <= x_range[0] or y_range[1] <= y_range[0]:
            return
        img = aggregate(self.data, self.kind, x_range, y_range, self.size, self.size)
        self.raster.data = {"image": [img], "x": [x_range[0]], "y": [y_range[0]], "dw": [x_range[1] - x_range[0]],
                            "dh": [y_range[1] - y_range[0]]}

    def update(self, changed: set[str] | None = None) -> None:
        d, s = self.data, self.sel
        if s.layout != self.kind:  # another layout: its own extent, aggregated afresh
            self.kind = s.layout
            x0, y0, x1, y1 = d.bounds(self.kind)
            self.figure.x_range.update(start=x0, end=x1)
            self.figure.y_range.update(start=y0, end=y1)
            self.reaggregate((x0, x1), (y0, y1))
        bounds = d.bounds(self.kind)
        if changed is None or changed & {"density", "layout"}:
            frame = d.head_frame(self.kind)
            on = s.density
            self.all_contours.data = (contour_lines(frame["x"].to_numpy(), frame["y"].to_numpy(), bounds, ALL_LEVELS)
                                      if on else {"xs": [], "ys": []})
        if changed is None or changed & {"layer", "head", "layout"}:
            x, y = head_instances(d, self.kind, s.layer, s.head)
            self.instances.data = {"x": x, "y": y}
            self.head_contours.data = contour_lines(x, y, bounds, HEAD_LEVELS, sigma=3.0)
        image = d.readable(s.image)
        if changed is None or changed & {"image", "layout"}:
            self.heads.data = image_heads(d, self.kind, image)
        if image is None:
            self.ring.data = {"x": [], "y": []}
        else:
            xy = getattr(d, f"head_xy_{self.kind}")[image, s.layer, s.head]
            self.ring.data = {"x": [float(xy[0])], "y": [float(xy[1])]}
        self.figure.title.text = f"Attention Pattern View — {s.layout} layout"
        self.note.text = d.layout_note(f"head_xy_{self.kind}")
