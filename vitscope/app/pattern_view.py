"""The Attention Pattern View (paper Sec. 5.4.2, Fig. 1 D1–D5): all heads on a tSNE map, one head in detail.

Overview (D1): every head of every image in the CLS or patch layout, rasterized with datashader
(or as a density with contours), the selected image's heads on top coloured by layer; a tap picks
the nearest head (KD-tree). Details of the selected head: the two-axes view (D3, source tokens on
top, target tokens below, one line per value above the threshold), the heatmap with enlarged prefix
row/column (D4), the histogram of all values with the threshold (D5), and the image with the
source/target attention masks of the hovered or tapped token (D2).

Attention is not stored: it comes from `attention(image)` (the app passes `Service.attention`),
called once per image change and cached. Heavy lifting is numpy; the pure methods
(`overview_points`, `pick`, `lines`, `default_threshold`, `masks`, `heatmap_rgb`) are what tests call.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from holoviews.operation.datashader import dynspread, rasterize
from scipy.ndimage import gaussian_filter

from vitscope.analysis.patterns import OFFSETS, PATTERNS
from vitscope.app.data import StoreData
from vitscope.app.state import Selection
from vitscope.app.style import CLS_COLOUR, PATCH_COLOUR, SELECTED, layer_colours, pane

hv.extension("bokeh", logo=False)

TOP_FRACTION = 0.01  # default threshold keeps the top 1 % of a head's values (paper Fig. 1 D5)
MAX_LINES = 20_000  # a browser draws this many segments smoothly; above it only the strongest are drawn
PREFIX_CELLS = 10  # heatmap cells a prefix row/column spans (the paper: 10 pixels instead of 1)
DENSITY_BINS = 128
RASTER = 400  # pixels of the datashaded overview (fixed: see `_shaded`)
HINT = "Select an image (Image Overview, or tap a head in the map) to see a head's attention pattern."


def _rgb(colour: str) -> np.ndarray:
    """'#rrggbb' → float [3] in [0, 1]."""
    c = colour.lstrip("#")
    return np.array([int(c[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.float64) / 255.0


class AttentionPatternView(pn.viewable.Viewer):
    """Overview of all heads' attention patterns plus the selected head's attention in four linked plots."""

    sel = param.ClassSelector(class_=Selection, doc="the shared selection (a parameter, so methods can depend on it)")
    source_token = param.Integer(default=0, bounds=(0, None), doc="token whose row (source mask) is shown")
    target_token = param.Integer(default=0, bounds=(0, None), doc="token whose column (target mask) is shown")
    error = param.String(default="", doc="the last attention error of this view (also in selection.message)")

    def __init__(self, data: StoreData, selection: Selection, attention: Callable[[int], np.ndarray],
                 **params) -> None:
        super().__init__(sel=selection, **params)
        self.data, self._attention_fn = data, attention
        self.prefix, self.grid = data.num_prefix, data.grid
        self.tokens = self.prefix + self.grid**2  # P
        self._cached_image: int | None = None
        self._cached: np.ndarray | None = None  # [L, H, P, P] of _cached_image, None after an error
        self._syncing = False
        self._layout: pn.viewable.Viewable | None = None
        self._point_cache: dict[str, pd.DataFrame] = {}  # per layout kind, built once
        self._shaded_cache: dict[str, hv.Image] = {}
        self._density_cache: dict[str, tuple[np.ndarray, tuple[float, float, float, float]]] = {}

    # ------------------------------------------------------------------ pure data (tests call these)

    def _points(self, kind: str) -> pd.DataFrame:
        if kind in self._point_cache:
            return self._point_cache[kind]
        xy = getattr(self.data, f"head_xy_{kind}")  # [N, L, H, 2]
        n, L, H = xy.shape[:3]
        image, layer, head = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(L), np.arange(H), indexing="ij"))
        flat = xy.reshape(-1, 2)  # [N·L·H, 2]
        ok = np.isfinite(flat).all(1)
        df = pd.DataFrame({"x": flat[ok, 0], "y": flat[ok, 1], "image": image[ok], "layer": layer[ok],
                           "head": head[ok]})
        self._point_cache[kind] = df
        return df

    def overview_points(self, kind: str | None = None) -> pd.DataFrame:
        """All heads of the layout (`selection.layout` by default): columns x, y, image, layer, head."""
        return self._points(kind or self.sel.layout)

    def _image(self) -> int | None:
        """The selected image if it is in the store (an out-of-range id shows the attention error instead)."""
        image = self.sel.image
        return image if image is not None and 0 <= image < self.data.images else None

    def selected_points(self) -> pd.DataFrame:
        """The selected image's L·H heads in the current layout, with a layer colour and tooltip fields."""
        cols = ["x", "y", "layer", "head", "image_id", "colour"]
        image = self._image()
        if image is None:
            return pd.DataFrame({c: [] for c in cols})
        xy = getattr(self.data, f"head_xy_{self.sel.layout}")[image]  # [L, H, 2]
        L, H = xy.shape[:2]
        layer, head = (a.ravel() for a in np.meshgrid(np.arange(L), np.arange(H), indexing="ij"))
        colours = np.array(layer_colours(L))
        return pd.DataFrame({"x": xy[..., 0].ravel(), "y": xy[..., 1].ravel(), "layer": layer, "head": head,
                             "image_id": self.data.image_ids[image], "colour": colours[layer]})[cols]

    def _density(self, kind: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """Smoothed 2-D histogram [bins, bins] (row 0 = top) of a layout and its bounds; O(N) once per layout."""
        if kind in self._density_cache:
            return self._density_cache[kind]
        pts = self._points(kind)
        x, y = pts["x"].to_numpy(), pts["y"].to_numpy()
        pad_x, pad_y = 0.05 * (np.ptp(x) or 1.0), 0.05 * (np.ptp(y) or 1.0)
        bounds = (x.min() - pad_x, y.min() - pad_y, x.max() + pad_x, y.max() + pad_y)
        h, _, _ = np.histogram2d(x, y, bins=DENSITY_BINS, range=[[bounds[0], bounds[2]], [bounds[1], bounds[3]]])
        h = gaussian_filter(h, 1.5)  # [x, y]
        out = np.flipud(h.T / max(h.max(), 1e-12)), bounds  # [y (top first), x], max 1
        self._density_cache[kind] = out
        return out

    def pick(self, x: float, y: float) -> tuple[int, int, int]:
        """Select the head nearest to (x, y) in the current layout (KD-tree) and return (image, layer, head)."""
        image, layer, head = self.data.nearest_head(self.sel.layout, float(x), float(y))
        self.sel.param.update(image=image, layer=layer, head=head)
        return image, layer, head

    def attention_matrix(self) -> np.ndarray | None:
        """A [P, P] of the selected head, or None (no image, or the attention call failed: see `error`)."""
        image = self.sel.image
        if image is None:
            return None
        if image != self._cached_image:
            self._cached_image, self._cached = image, None
            previous = self.error
            try:
                if self._image() is None:
                    raise IndexError(f"not in this store (0..{self.data.images - 1}): pick another image")
                att = np.asarray(self._attention_fn(int(image)), dtype=np.float32)  # [L, H, P, P]
                want = (self.data.layers, self.data.heads, self.tokens, self.tokens)
                if att.shape != want:
                    raise ValueError(f"attention of image {image} has shape {att.shape}, expected {want}: "
                                     "the store and the model do not match")
                self._cached, self.error = att, ""
                if previous and self.sel.message == previous:
                    self.sel.message = ""
            except Exception as e:  # noqa: BLE001 - never raise into Panel: show one readable line
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                self.error = f"attention of image {image}: {msg}"
                self.sel.message = self.error
        if self._cached is None or not self._head_ok():
            return None
        return self._cached[self.sel.layer, self.sel.head]

    def _head_ok(self) -> bool:
        return 0 <= self.sel.layer < self.data.layers and 0 <= self.sel.head < self.data.heads

    def default_threshold(self, A: np.ndarray | None = None) -> float:
        """The value above which exactly the top 1 % of A's values lie (ties aside)."""
        A = self.attention_matrix() if A is None else A
        if A is None:
            return 0.0
        flat = A.ravel()
        k = max(1, int(round(TOP_FRACTION * flat.size)))
        if k >= flat.size:
            return float(flat.min()) - 1e-12
        return float(np.partition(flat, flat.size - k - 1)[flat.size - k - 1])  # (k+1)-th largest

    def threshold(self) -> float:
        """The threshold in use: the selection's, or the head's top-1 % value when it is None."""
        t = self.sel.threshold
        return self.default_threshold() if t is None else float(t)

    def lines(self, threshold: float | None = None, A: np.ndarray | None = None) -> pd.DataFrame:
        """Two-axes segments for every A[s, t] > threshold: source s at (s, 1), target t at (t, 0).

        Columns x0, y0, x1, y1, source, target, value, colour (blue when s or t is a prefix token, else
        orange), alpha (light → dark with the value); sorted weakest first so strong lines are on top.
        At most MAX_LINES (the strongest) are returned.
        """
        A = self.attention_matrix() if A is None else A
        cols = ["x0", "y0", "x1", "y1", "source", "target", "value", "colour", "alpha"]
        if A is None:
            return pd.DataFrame({c: [] for c in cols})
        thr = self.threshold() if threshold is None else threshold
        src, tgt = np.nonzero(A > thr)
        val = A[src, tgt]
        order = np.argsort(val, kind="stable")[-MAX_LINES:]
        src, tgt, val = src[order], tgt[order], val[order]
        cls = (src < self.prefix) | (tgt < self.prefix)
        top = float(val.max()) if val.size else 1.0
        alpha = 0.15 + 0.85 * np.clip(val / max(top, 1e-12), 0, 1)
        return pd.DataFrame({"x0": src.astype(float), "y0": 1.0, "x1": tgt.astype(float), "y1": 0.0, "source": src,
                             "target": tgt, "value": val, "colour": np.where(cls, CLS_COLOUR, PATCH_COLOUR),
                             "alpha": alpha})[cols]

    def masks(self, token: int, target: int | None = None, A: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray] | None:
        """Source mask A[token, patches] and target mask A[patches, target or token], each [grid, grid]."""
        A = self.attention_matrix() if A is None else A
        if A is None:
            return None
        target = token if target is None else target
        p, k = self.grid, self.prefix
        return A[token, k:].reshape(p, p), A[k:, target].reshape(p, p)

    def heatmap_edges(self) -> np.ndarray:
        """[P+1] cell edges of the heatmap: each prefix token spans PREFIX_CELLS cells, each patch one."""
        widths = np.r_[np.full(self.prefix, PREFIX_CELLS), np.ones(self.grid**2, int)]
        return np.r_[0, np.cumsum(widths)]

    def heatmap_rgb(self, threshold: float | None = None, A: np.ndarray | None = None) -> np.ndarray | None:
        """[M, M, 3] uint8 heatmap (rows = source, cols = target, prefix rows/cols enlarged), blue for
        CLS-related cells and orange for patch→patch, darker = stronger; cells at or below the threshold
        are faded to a fifth so the kept ones stand out (the threshold "also applies to this heatmap")."""
        A = self.attention_matrix() if A is None else A
        if A is None:
            return None
        thr = self.threshold() if threshold is None else threshold
        t = np.sqrt(np.clip(A / max(float(A.max()), 1e-12), 0, 1))  # [P, P] perceptual boost of small values
        t = np.where(A > thr, t, 0.2 * t)
        k = self.prefix
        base = np.empty((*A.shape, 3))
        base[...] = _rgb(PATCH_COLOUR)
        base[:k, :] = _rgb(CLS_COLOUR)
        base[:, :k] = _rgb(CLS_COLOUR)
        rgb = 1.0 - t[..., None] * (1.0 - base)  # white → full colour
        reps = np.diff(self.heatmap_edges())
        rgb = np.repeat(np.repeat(rgb, reps, axis=0), reps, axis=1)  # [M, M, 3]
        return (rgb * 255).round().astype(np.uint8)

    def token_at(self, x: float) -> int:
        """Heatmap coordinate (0 at the left/top edge) → token index."""
        edges = self.heatmap_edges()
        return int(np.clip(np.searchsorted(edges, x, side="right") - 1, 0, self.tokens - 1))

    def info(self) -> str:
        """Markdown: the selected head's pattern label and mean attention distance."""
        s, d = self.sel, self.data
        if s.image is None:
            return HINT
        if self._image() is None:
            return f"image {s.image} is not in this store (0..{d.images - 1})"
        if not self._head_ok():
            return f"layer {s.layer} head {s.head} is not in this model ({d.layers} layers × {d.heads} heads)"
        i, layer, head = s.image, s.layer, s.head
        label, offset = int(d.pattern_label[i, layer, head]), int(d.pattern_offset[i, layer, head])
        pattern = PATTERNS[label] if 0 <= label < len(PATTERNS) else "—"
        if pattern == "diagonal" and 0 <= offset < len(OFFSETS):
            pattern += f" ({OFFSETS[offset]})"
        dist = float(d.attention_distance[i, layer, head])
        return (f"**image {d.image_ids[i]} · layer {layer} · head {head}** — pattern: **{pattern}** · "
                f"mean attention distance: **{dist:.2f}** patches")

    # ------------------------------------------------------------------ plots (each a DynamicMap of a method)

    def _shaded(self, kind: str) -> hv.Image:
        """All heads of a layout rasterized with datashader (count per pixel, spread so lone heads stay visible).

        Static (`dynamic=False`, once per layout kind): a dynamic rasterize re-aggregates on every zoom, but its
        range streams fire before the page reports itself ready and Panel then re-schedules the refresh forever,
        which froze every view of the served page (Panel 1.9 / HoloViews 1.23)."""
        if kind not in self._shaded_cache:
            _, (x0, y0, x1, y1) = self._density(kind)
            pts = hv.Points(self._points(kind), ["x", "y"])
            agg = rasterize(pts, dynamic=False, width=RASTER, height=RASTER, x_range=(x0, x1), y_range=(y0, y1))
            self._shaded_cache[kind] = dynspread(agg, threshold=0.6, max_px=3, dynamic=False)
        return self._shaded_cache[kind]

    @param.depends("sel.layout", "sel.density")
    def shaded(self) -> hv.Image:
        _, (x0, y0, x1, y1) = self._density(self.sel.layout)
        alpha = 0.15 if self.sel.density else 0.9
        return self._shaded(self.sel.layout).opts(cmap="Greys", cnorm="eq_hist", alpha=alpha, xlim=(x0, x1),
                                                  ylim=(y0, y1))

    @param.depends("sel.layout", "sel.density")
    def density_plot(self) -> hv.Overlay:
        dens, bounds = self._density(self.sel.layout)
        on = self.sel.density
        img = hv.Image(dens if on else np.zeros_like(dens), bounds=bounds, kdims=["x", "y"], vdims=["density"])
        cont = hv.operation.contours(img, levels=[0.05, 0.15, 0.3, 0.5, 0.7, 0.9] if on else [0.5])
        return (img.opts(cmap="Greys", alpha=0.6 if on else 0.0, clim=(0, 1)) *
                cont.opts(line_color="#555555", line_width=1, cmap=["#555555"], show_legend=False))

    @param.depends("sel.image", "sel.layer", "sel.head", "sel.layout")
    def selected_plot(self) -> hv.Overlay:
        df = self.selected_points()
        vdims = ["layer", "head", "image_id", "colour"]
        pts = hv.Points(df, ["x", "y"], vdims).opts(
            color="colour", size=8, line_color="black", line_width=0.5, tools=["hover", "tap"],
            hover_tooltips=[("image", "@image_id"), ("layer", "@layer"), ("head", "@head")])
        sel = df[(df["layer"] == self.sel.layer) & (df["head"] == self.sel.head)] if len(df) else df
        ring = hv.Points(sel, ["x", "y"], vdims).opts(size=16, fill_alpha=0, line_color=SELECTED, line_width=2.5)
        return pts * ring

    @param.depends("sel.image", "sel.layer", "sel.head", "sel.threshold")
    def two_axes(self) -> hv.Segments:
        """D3: source tokens on top, target tokens below, a line per value above the threshold."""
        df = self.lines()
        return hv.Segments(df, ["x0", "y0", "x1", "y1"], ["value", "colour", "alpha", "source", "target"]).opts(
            color="colour", alpha="alpha", line_width=1.5, xlim=(-1, self.tokens), ylim=(-0.15, 1.15),
            yticks=[(0, "target"), (1, "source")], xlabel="token (0 = CLS, then patches)", ylabel="", width=500,
            height=220, title=f"two axes: {len(df)} values > {self.threshold():.3g} (hover a token)")

    def token_ticks(self) -> hv.Points:
        """The two axes' tokens: CLS-related in blue, patches in orange."""
        ticks = np.arange(self.tokens)
        colour = np.where(ticks < self.prefix, CLS_COLOUR, PATCH_COLOUR)
        frame = pd.DataFrame({"x": np.r_[ticks, ticks].astype(float),
                              "y": np.r_[np.ones_like(ticks), np.zeros_like(ticks)].astype(float),
                              "c": np.r_[colour, colour]})
        return hv.Points(frame, ["x", "y"], ["c"]).opts(color="c", size=3)

    @param.depends("sel.image", "sel.layer", "sel.head", "sel.threshold")
    def heatmap(self) -> hv.RGB:
        """D4: A with the prefix row/column enlarged; tap a cell to show its source/target masks."""
        m = float(self.heatmap_edges()[-1])
        rgb = self.heatmap_rgb()
        if rgb is None:  # blank of the same size: Bokeh keeps an image's first resolution across updates
            rgb = np.full((int(m), int(m), 3), 255, np.uint8)
        return hv.RGB(rgb, bounds=(0, 0, m, m), kdims=["target", "source"]).opts(
            title="A: rows = source, cols = target", xaxis=None, yaxis=None,
            frame_width=280, frame_height=280, tools=["tap"])

    @param.depends("sel.image", "sel.layer", "sel.head", "sel.threshold")
    def histogram(self) -> hv.Histogram:
        """D5: all values of A (log counts) and the threshold; tap to move it."""
        A = self.attention_matrix()
        values = np.zeros(1) if A is None else A.ravel()
        counts, edges = np.histogram(values, bins=60, range=(0.0, max(float(values.max()), 1e-6)))
        hist = hv.Histogram((edges, np.log10(counts + 1.0)), kdims=["attention"], vdims=["log10(count + 1)"]).opts(
            color="#999999", line_color=None, width=500, height=220, tools=["tap"], framewise=True)
        thr = self.threshold()
        kept = float((values > thr).mean() * 100)
        return hist.opts(title=f"threshold {thr:.3g}: top {kept:.2g} % (tap to move)")

    @param.depends("sel.image", "sel.layer", "sel.head", "sel.threshold")
    def threshold_line(self) -> hv.VLine:
        return hv.VLine(self.threshold()).opts(color=SELECTED, line_width=2)

    def masks_rgb(self, source: int, target: int) -> np.ndarray:
        """[S, 3S + 2·GAP, 3] uint8: the image, its source mask and its target mask side by side (S = thumbnail size).

        A mask tints the image towards blue (a prefix token) or orange (a patch token) in proportion to the
        attention, normalised to the mask's maximum; the token's own patch is outlined. One picture, not three
        plots: this view is redrawn on every head or token change and Bokeh figures are the costly part."""
        image = self._image()
        p = self.grid
        # A blank of the thumbnails' own size: Bokeh kept the first picture's resolution when the size changed.
        blank = np.full(self.data.ds["thumbnail"].shape[1:], 255, np.uint8)
        base = (self.data.thumbnail(image) if image is not None else blank).astype(np.float64) / 255.0  # [S, S, 3]
        size = base.shape[0]
        cell = max(size // p, 1)
        m = self.masks(source, target)
        panels = [base]
        for tok, mask in zip((source, target), m if m is not None else (np.zeros((p, p)),) * 2, strict=True):
            w = np.kron(mask / max(float(mask.max()), 1e-12), np.ones((cell, cell)))  # [p·cell, p·cell]
            w = np.pad(w, ((0, size - w.shape[0]), (0, size - w.shape[1])), mode="edge")[..., None] * 0.75
            tint = _rgb(CLS_COLOUR if tok < self.prefix else PATCH_COLOUR)
            panel = base * (1 - w) + tint * w
            if tok >= self.prefix:  # outline the token's own patch
                r, c = divmod(tok - self.prefix, p)
                y0, x0, t = r * cell, c * cell, max(cell // 8, 1)
                box = panel[y0 : y0 + cell, x0 : x0 + cell]
                edge = np.ones(box.shape[:2], bool)
                edge[t:-t, t:-t] = False
                box[edge] = _rgb(SELECTED)
            panels.append(panel)
        gap = np.ones((size, max(size // 16, 1), 3))
        return (np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1) * 255).round().astype(np.uint8)

    @param.depends("sel.image", "sel.layer", "sel.head", "source_token", "target_token")
    def image_masks(self) -> hv.RGB:
        """D2: the image, and its source mask (row) and target mask (column) of the chosen tokens."""
        src, tgt = min(self.source_token, self.tokens - 1), min(self.target_token, self.tokens - 1)
        rgb = self.masks_rgb(src, tgt)
        name = lambda tok: "CLS" if tok < self.prefix else f"patch {tok - self.prefix}"  # noqa: E731
        h, w = rgb.shape[:2]
        return hv.RGB(rgb, bounds=(0, 0, w, h)).opts(
            xaxis=None, yaxis=None, frame_height=190, frame_width=int(round(190 * w / h)), toolbar=None,
            title=f"image · source mask of {name(src)} · target mask of {name(tgt)}")

    @param.depends("sel.image", "sel.layer", "sel.head")
    def info_pane(self) -> pn.pane.Markdown:
        return pn.pane.Markdown(self.info(), sizing_mode="stretch_width", css_classes=["vs-pattern-info"])

    @param.depends("error")
    def error_pane(self) -> pn.viewable.Viewable:
        if not self.error:
            return pn.Spacer(height=0)
        return pn.pane.Alert(html.escape(self.error), alert_type="danger", sizing_mode="stretch_width")

    # ------------------------------------------------------------------ interaction

    def _on_tap_overview(self, x: float | None = None, y: float | None = None) -> None:
        if x is not None and y is not None:
            self.pick(x, y)

    def _on_hover_axes(self, x: float | None = None, y: float | None = None) -> None:
        if x is None or y is None:
            return
        tok = int(np.clip(round(x), 0, self.tokens - 1))
        if y >= 0.5:
            self.source_token = tok
        else:
            self.target_token = tok

    def _on_tap_heatmap(self, x: float | None = None, y: float | None = None) -> None:
        if x is None or y is None:
            return
        m = float(self.heatmap_edges()[-1])
        self.param.update(source_token=self.token_at(m - y), target_token=self.token_at(x))

    def _on_tap_histogram(self, x: float | None = None, y: float | None = None) -> None:
        if x is not None:
            self.sel.threshold = max(float(x), 0.0)

    def _sync_slider(self, *_) -> None:
        """Keep the slider on the threshold in use and its range on the head's values (no write-back)."""
        A = self.attention_matrix()
        top = max(float(A.max()), 1e-6) if A is not None else 1.0
        self._syncing = True
        try:
            self._slider.param.update(end=top, step=top / 500, value=float(np.clip(self.threshold(), 0, top)))
        finally:
            self._syncing = False
        for row in self._details:
            row.visible = self.sel.image is not None

    def _slider_moved(self, event: param.parameterized.Event) -> None:
        if not self._syncing:
            self.sel.threshold = float(event.new)

    @staticmethod
    def _stream(kind: type[hv.streams.Stream], source: hv.DynamicMap, handler: Callable) -> hv.streams.Stream:
        """A pointer stream on a plot whose (x, y) goes to `handler` (as a param watcher, like the other views)."""
        stream = kind(source=source, x=None, y=None)
        stream.param.watch(lambda *_: handler(stream.x, stream.y), ["x", "y"])
        return stream

    def _build(self) -> pn.viewable.Viewable:
        s = self.sel
        shaded = hv.DynamicMap(self.shaded)
        overview = (shaded * hv.DynamicMap(self.density_plot) * hv.DynamicMap(self.selected_plot)).opts(
            hv.opts.Overlay(title="Attention Pattern View — all heads (tap to pick the nearest)", width=560,
                            height=520, framewise=True),
            hv.opts.Image(xaxis=None, yaxis=None))
        two_axes, heatmap, histogram = (hv.DynamicMap(f) for f in (self.two_axes, self.heatmap, self.histogram))
        # Stream sources are DynamicMaps of one element: a tap on a DynamicMap of an Overlay never reaches Python.
        self.overview_tap = self._stream(hv.streams.Tap, shaded, self._on_tap_overview)
        self.axes_pointer = self._stream(hv.streams.PointerXY, two_axes, self._on_hover_axes)
        self.heatmap_tap = self._stream(hv.streams.Tap, heatmap, self._on_tap_heatmap)
        self.histogram_tap = self._stream(hv.streams.Tap, histogram, self._on_tap_histogram)

        self._slider = pn.widgets.FloatSlider(label="threshold (drag, or tap the histogram)", start=0.0, end=1.0,
                                              step=0.002, format="0.[0000]", width=400)
        self._slider.param.watch(self._slider_moved, "value")
        reset = pn.widgets.Button(label="top 1 %", width=80)
        reset.on_click(lambda _: setattr(s, "threshold", None))
        # Fixed plot sizes and a flat column: with responsive/aspect plots, or these rows in a nested Column,
        # Bokeh's layout never settled in Chromium, the page never sent `document_ready`, and Panel then held
        # back every later update of every view (Panel 1.9.4, Bokeh 3.9.2).
        threshold = pn.Column(pane(histogram * hv.DynamicMap(self.threshold_line)), pn.Row(self._slider, reset))
        self._details = [pn.Row(pane(heatmap), pane(hv.DynamicMap(self.image_masks))),
                         pn.Row(pane(two_axes * self.token_ticks()), threshold)]
        self._sync_slider()
        s.param.watch(self._sync_slider, ["image", "layer", "head", "threshold"])
        controls = pn.Row(pn.widgets.Checkbox.from_param(s.param.density, label="density"),
                          pn.widgets.RadioButtonGroup.from_param(s.param.layout))
        return pn.Column(
            pn.Row(pn.Column(controls, pane(overview, css_classes=["vs-pattern-map"])),
                   pn.Column(self.info_pane, self.error_pane, sizing_mode="stretch_width")),
            *self._details, name="Attention Pattern View")

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:
            self._layout = self._build()
        return self._layout
