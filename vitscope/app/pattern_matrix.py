"""One head's attention matrix A [P, P] drawn three ways (paper Fig. 1 D3–D5): the two-axes view (source
tokens on top, target tokens below, a line per value above the threshold; hovering a token highlights its
lines), the heatmap with the prefix rows/columns enlarged, and the histogram of all values with the
threshold. The figures are built once; their data are `vitscope.readout.attention`'s.
"""

from __future__ import annotations

import numpy as np
from bokeh.events import Tap
from bokeh.models import ColumnDataSource, CustomJS, HoverTool, Span

from vitscope.app.style import figure, rgba_image
from vitscope.readout.attention import LINE_COLUMNS, heatmap_edges, heatmap_rgb, histogram, lines, token_at
from vitscope.readout.palette import CLS, PATCH, SELECTED

# The two-axes hover runs in the browser: it copies the hovered token's lines into the highlight source
# at once, and tells the server which token it is (the `tags` of that source) so the masks follow.
HOVER_JS = """
const idx = cb_data.index.indices;
if (!idx.length) return;
const k = idx[0], P = tokens, tok = k % P, side = k < P ? 1 : 0;
if (hl.tags.length == 2 && hl.tags[0] == tok && hl.tags[1] == side) return;
const d = seg.data, key = side ? d.source : d.target;
const out = {x0: [], y0: [], x1: [], y1: []};
for (let i = 0; i < key.length; i++) {
  if (key[i] == tok) { out.x0.push(d.x0[i]); out.y0.push(d.y0[i]); out.x1.push(d.x1[i]); out.y1.push(d.y1[i]); }
}
hl.data = out;
hl.tags = [tok, side];
"""


class MatrixPlots:
    """The three figures of one head's matrix; `show(A, threshold)` pushes new data into them."""

    def __init__(self, prefix: int, tokens: int, on_token=None, on_threshold=None, on_cell=None) -> None:
        self.prefix, self.tokens = prefix, tokens
        self.edges = heatmap_edges(prefix, tokens)
        m = int(self.edges[-1])

        self.segments = ColumnDataSource({c: [] for c in LINE_COLUMNS})
        axes = figure("two axes", 370, 160, name="vs-axes-fig",
                      tools="xpan,xwheel_zoom,reset", x_range=(-1, tokens), y_range=(-0.2, 1.2))
        axes.segment("x0", "y0", "x1", "y1", source=self.segments, color="colour", alpha="alpha", line_width=1.2)
        self.highlight = ColumnDataSource({"x0": [], "y0": [], "x1": [], "y1": []}, name="vs-highlight")
        axes.segment("x0", "y0", "x1", "y1", source=self.highlight, color=SELECTED, line_width=2.5)
        ticks = np.arange(tokens)
        colour = np.where(ticks < prefix, CLS, PATCH)
        tick_src = ColumnDataSource({"x": np.r_[ticks, ticks].astype(float), "y": np.r_[np.ones(tokens),
                                     np.zeros(tokens)], "c": np.r_[colour, colour], "t": np.r_[ticks, ticks]})
        tick_r = axes.scatter("x", "y", source=tick_src, color="c", size=5, line_color=None)
        axes.add_tools(HoverTool(renderers=[tick_r], tooltips=[("token", "@t")],
                                 callback=CustomJS(args={"seg": self.segments, "hl": self.highlight,
                                                         "tokens": tokens}, code=HOVER_JS)))
        axes.yaxis.ticker = [0, 1]
        axes.yaxis.major_label_overrides = {0: "target", 1: "source"}
        axes.xaxis.axis_label = "token (0 = CLS, then patches)"
        axes.ygrid.visible = False
        self.axes = axes

        self.heat_source = ColumnDataSource({"image": [np.zeros((m, m), np.uint32)]})
        heat = figure("A: rows = source, cols = target", 200, 210, tools="tap", x_range=(0, m), y_range=(0, m),
                      bare=True)
        heat.image_rgba("image", x=0, y=0, dw=m, dh=m, source=self.heat_source)
        self.heatmap = heat

        self.hist_source = ColumnDataSource(histogram(None))
        hist = figure("values of A", 250, 125, tools="tap", x_range=(0, 1), y_range=(0, 1))
        hist.quad(left="left", right="right", top="top", bottom=0, source=self.hist_source, color="#999999")
        self.threshold_line = Span(dimension="height", location=0, line_color=SELECTED, line_width=2)
        hist.add_layout(self.threshold_line)
        hist.yaxis.axis_label = "log10(count + 1)"
        self.hist = hist
        for fig in (heat, hist):
            fig.toolbar_location = None
        if on_token is not None:
            self.highlight.on_change("tags", lambda _a, _o, new: len(new) == 2 and on_token(int(new[0]), bool(new[1])))
        if on_threshold is not None:
            hist.on_event(Tap, lambda e: e.x is not None and on_threshold(max(float(e.x), 0.0)))
        if on_cell is not None:
            heat.on_event(Tap, lambda e: e.x is not None and on_cell(token_at(self.edges, m - e.y),
                                                                     token_at(self.edges, e.x)))

    def show(self, A: np.ndarray | None, threshold: float, head_changed: bool = True) -> None:
        """Push one head's matrix (None: blank) and threshold into the figures."""
        seg = lines(A, threshold, self.prefix)
        self.segments.data = seg
        self.highlight.data = {"x0": [], "y0": [], "x1": [], "y1": []}
        self.highlight.tags = []
        above = 0 if A is None else int((A > threshold).sum())
        shown = f"{len(seg['value'])} of {above}" if above > len(seg["value"]) else str(above)
        self.axes.title.text = f"two axes: {shown} lines > {threshold:.3g}"
        m = int(self.edges[-1])
        pixels = np.full((m, m, 3), 255, np.uint8) if A is None else heatmap_rgb(A, threshold, self.prefix)
        self.heat_source.data = {"image": [rgba_image(pixels)]}
        if head_changed:
            h = histogram(A)
            self.hist_source.data = h
            self.hist.x_range.update(start=0, end=float(h["right"][-1]))
            self.hist.y_range.update(start=0, end=float(h["top"].max()) * 1.05 + 1e-6)
        self.threshold_line.location = threshold
        kept = 0.0 if A is None else float((A[self.prefix:, self.prefix:] > threshold).mean() * 100)
        self.hist.title.text = f"threshold {threshold:.3g} (top {kept:.2g} % of patch→patch)"
