"""One head's attention matrix A [P, P] drawn three ways (paper Fig. 1 D3–D5): the two-axes view (source
tokens on top, target tokens below, a line per value above the threshold; hovering a token highlights its
lines), the heatmap with the prefix rows/columns enlarged, and the histogram of all values with the
threshold. Pure functions of (A, threshold, number of prefix tokens); the figures are built once.
"""

from __future__ import annotations

import numpy as np
from bokeh.events import Tap
from bokeh.models import ColumnDataSource, CustomJS, HoverTool, Span

from vitscope.analysis.binary import top_count
from vitscope.app.style import CLS_COLOUR, PATCH_COLOUR, SELECTED, figure, rgb, rgba_image

MAX_LINES = 20_000  # a browser draws this many segments smoothly; above it only the strongest are drawn
PREFIX_CELLS = 10  # heatmap cells a prefix row/column spans (the paper: 10 pixels instead of 1)
HIST_BINS = 60
LINE_COLUMNS = ("x0", "y0", "x1", "y1", "source", "target", "value", "colour", "alpha")


def top_threshold(A: np.ndarray | None, fraction: float, prefix: int) -> float:
    """The value above which lie exactly the k = ceil(fraction·N²) largest patch→patch values (ties aside): the
    build's binarisation (`analysis.binary.binarise`, the same k), so the default view shows the map the pattern
    labels saw."""
    if A is None:
        return 0.0
    flat = A[prefix:, prefix:].ravel()
    k = top_count(fraction, A.shape[-1] - prefix)
    if k >= flat.size:
        return float(flat.min()) - 1e-12
    return float(np.partition(flat, flat.size - k - 1)[flat.size - k - 1])  # (k+1)-th largest


def lines(A: np.ndarray | None, threshold: float, prefix: int) -> dict[str, np.ndarray]:
    """Two-axes segments for every A[s, t] > threshold: source s at (s, 1), target t at (t, 0); blue when s
    or t is a prefix token, else orange; alpha light → dark with the value; weakest first so strong lines
    are drawn on top; at most MAX_LINES (the strongest)."""
    if A is None:  # colours as an empty string array: BokehJS rejects a float one ("invalid color array")
        return {c: np.empty(0, "U7" if c == "colour" else float) for c in LINE_COLUMNS}
    src, tgt = np.nonzero(A > threshold)
    val = A[src, tgt]
    order = np.argsort(val, kind="stable")[-MAX_LINES:]
    src, tgt, val = src[order], tgt[order], val[order]
    cls = (src < prefix) | (tgt < prefix)
    top = float(val.max()) if val.size else 1.0
    return {"x0": src.astype(float), "y0": np.ones(len(src)), "x1": tgt.astype(float), "y1": np.zeros(len(src)),
            "source": src, "target": tgt, "value": val, "colour": np.where(cls, CLS_COLOUR, PATCH_COLOUR),
            "alpha": 0.15 + 0.85 * np.clip(val / max(top, 1e-12), 0, 1)}


def heatmap_edges(prefix: int, tokens: int) -> np.ndarray:
    """[P+1] cell edges of the heatmap: each prefix token spans PREFIX_CELLS cells, each patch one."""
    return np.r_[0, np.cumsum(np.r_[np.full(prefix, PREFIX_CELLS), np.ones(tokens - prefix, int)])]


def heatmap_rgb(A: np.ndarray, threshold: float, prefix: int) -> np.ndarray:
    """[M, M, 3] uint8 (row 0 = source token 0): blue for CLS-related cells, orange for patch→patch, darker =
    stronger; cells at or below the threshold fade to a fifth (the threshold "also applies to this heatmap")."""
    t = np.sqrt(np.clip(A / max(float(A.max()), 1e-12), 0, 1))  # [P, P] perceptual boost of small values
    t = np.where(A > threshold, t, 0.2 * t)
    base = np.empty((*A.shape, 3))
    base[...] = rgb(PATCH_COLOUR)
    base[:prefix, :] = rgb(CLS_COLOUR)
    base[:, :prefix] = rgb(CLS_COLOUR)
    out = 1.0 - t[..., None] * (1.0 - base)  # white → full colour
    reps = np.diff(heatmap_edges(prefix, len(A)))
    out = np.repeat(np.repeat(out, reps, axis=0), reps, axis=1)  # [M, M, 3]
    return (out * 255).round().astype(np.uint8)


def token_at(edges: np.ndarray, x: float) -> int:
    """Heatmap coordinate (0 at the left/top edge) → token index."""
    return int(np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2))


def histogram(A: np.ndarray | None) -> dict[str, np.ndarray]:
    """Quads of the histogram of A's values, log10(count + 1) high."""
    values = np.zeros(1) if A is None else A.ravel()
    counts, edges = np.histogram(values, bins=HIST_BINS, range=(0.0, max(float(values.max()), 1e-6)))
    return {"left": edges[:-1], "right": edges[1:], "top": np.log10(counts + 1.0)}


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
        colour = np.where(ticks < prefix, CLS_COLOUR, PATCH_COLOUR)
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
