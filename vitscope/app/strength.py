"""The paper's Attention Strength View (Fig. 1 C; Fig. 9 D–E): all heads by strength entropy (C1), the
selected head's k-hop strength vector (C2) and the distribution of its entropy over all images with the
current image marked (C3). Up to four pinned heads are drawn beside the selected one in C2 and C3.
"""

from __future__ import annotations

import numpy as np
from bokeh.events import Tap
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, HoverTool, Span

from vitscope.app.session import guarded
from vitscope.app.style import figure
from vitscope.readout.palette import SELECTED, layer_colours
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.readout.strength import ENTROPY_LABEL, compared, entropy_steps, head_points, head_x, strength_bars
from vitscope.vocab import head_name


class AttentionStrengthView:
    """C1 scatter of heads (tap selects), C2 strength vectors, C3 entropy distributions."""

    watches = ("image", "layer", "head", "pinned", "cls")

    def __init__(self, data: StoreData, sel: Selection, width: int = 330) -> None:
        self.data, self.sel = data, sel
        L, H = data.layers, data.heads
        layer, head = np.divmod(np.arange(L * H), H)
        self.x = head_x(L, H)
        self.source = ColumnDataSource({"x": self.x, "layer": layer, "head": head,
                                        "colour": np.array(layer_colours(L))[layer], **head_points(data, None)})
        fig = figure("Attention Strength View", width, 160, name="vs-strength-fig",
                     tools="tap", x_range=(-0.5, L - 0.5),
                     y_range=(-0.03, 1.05))
        dots = fig.scatter("x", "y", source=self.source, color="colour", size=8, line_color="white")
        dots.nonselection_glyph = dots.glyph.clone()
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[("head", "L@layer H@head"), ("entropy", "@y{0.000}"),
                                                            ("mean attention distance", "@distance{0.00}")]))
        self.marks = ColumnDataSource({"x": [], "y": [], "colour": []})
        fig.scatter("x", "y", source=self.marks, size=15, fill_alpha=0, line_color="colour", line_width=2.5)
        fig.xaxis.ticker = list(range(L))
        fig.xaxis.axis_label, fig.yaxis.axis_label = "layer", ENTROPY_LABEL
        fig.on_event(Tap, guarded(sel, "head tap", lambda e: self.pick(e.x, e.y)))
        self.figure = fig

        self.bar_source = ColumnDataSource({"x": [], "top": [], "colour": [], "name": [], "width": []},
                                           name="vs-strength-bars")
        bars = figure("k-hop attention strength", width, 125, tools="", x_range=(-0.5, data.grid - 0.5))
        bars.vbar("x", top="top", width="width", color="colour", source=self.bar_source)
        bars.add_tools(HoverTool(tooltips=[("head", "@name"), ("strength", "@top{0.000}")]))
        bars.xaxis.axis_label = "k-hop neighbours"
        bars.xaxis.ticker = list(range(data.grid))
        self.bars = bars

        self.step_source = ColumnDataSource({"xs": [], "ys": [], "colour": [], "name": []})
        hist = figure("strength entropy over all images", width, 115, tools="", x_range=(0, 1))
        hist.multi_line("xs", "ys", source=self.step_source, color="colour", line_width=2)
        self.current = Span(dimension="height", location=0, line_color=SELECTED, line_width=2, visible=False)
        hist.add_layout(self.current)
        hist.xaxis.axis_label, hist.yaxis.axis_label = ENTROPY_LABEL, "share of images"
        self.hist = hist
        for f in (bars, hist):
            f.toolbar_location = None
        self.update()

    def pick(self, x: float | None, y: float | None) -> tuple[int, int] | None:
        """Select the head nearest to (x, y) on screen (NaN points are never picked)."""
        if x is None or y is None:
            return None
        ys = np.asarray(self.source.data["y"], dtype=float)
        f = self.figure
        sx = f.width / (f.x_range.end - f.x_range.start)  # pixels per data unit
        sy = f.height / (f.y_range.end - f.y_range.start)
        dist = (sx * (self.x - x)) ** 2 + (sy * (ys - y)) ** 2
        k = int(np.argmin(np.where(np.isfinite(dist), dist, np.inf)))
        layer, head = divmod(k, self.data.heads)
        self.sel.param.update(layer=layer, head=head)
        return layer, head

    def update(self, changed: set[str] | None = None) -> None:
        d, s = self.data, self.sel
        image = d.readable(s.image)
        if changed is None or changed & {"image", "cls"}:
            self.source.data.update(head_points(d, image, s.cls))
            who = (f"image {image}" if image is not None else "mean of all images" if s.cls is None else
                   f"mean of class {d.class_names[s.cls]!r}")
            self.figure.title.text = f"Attention Strength View — {who}"
        heads = compared(d, s)
        ys = self.source.data["y"]
        ks = [d.head_index(layer, head) for layer, head, _ in heads]
        self.marks.data = {"x": list(self.x[ks]), "y": [float(ys[k]) for k in ks], "colour": [c for *_, c in heads]}
        self.bar_source.data = bars = strength_bars(d, heads, image, s.cls)
        self.bars.y_range.update(start=0, end=max(max(bars["top"], default=0.0), 1e-6) * 1.1)
        self.step_source.data = entropy_steps(d, heads)
        names = ", ".join(head_name(layer, head) for layer, head, _ in heads)
        self.bars.title.text = f"k-hop attention strength — {names}"
        self.hist.y_range.update(start=0, end=max(max((max(y) for y in self.step_source.data["ys"]), default=0),
                                                  1e-6) * 1.08)
        if image is None:
            self.current.visible = False
            self.hist.title.text = f"strength entropy over all images — {names}"
        else:
            value = float(d.strength_entropy[image, s.layer, s.head])
            self.current.update(location=value, visible=True)
            self.hist.title.text = f"entropy over images — {names} (image {image}: {value:.2f})"

    def bokeh(self):
        return column(self.figure, self.bars, self.hist)

