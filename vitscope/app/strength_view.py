"""The paper's Attention Strength View (Fig. 1 C): all heads by strength entropy (C1), the selected
head's k-hop strength vector (C2) and its entropy over all images (C3)."""

from __future__ import annotations

from typing import NamedTuple

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from vitscope.app.data import StoreData
from vitscope.app.state import Selection
from vitscope.app.style import PLOT, SELECTED, layer_colours, pane

ENTROPY_LABEL = "strength entropy (normalised)"
JITTER = 0.6  # width of a layer's column of heads, in layer units (< 1 so columns never touch)


class EntropySeries(NamedTuple):
    """C3 data: valid images sorted by the head's entropy; `current` is the x of the selected image."""

    image: np.ndarray  # [Nv] image index at each x = 0..Nv-1
    entropy: np.ndarray  # [Nv] ascending
    current: int | None  # x position of the selected image, None when no (valid) image is selected


class AttentionStrengthView(pn.viewable.Viewer):
    """Scatter of heads (x = layer, y = strength entropy), bars of one head's k-hop strength, and an
    area plot of that head's entropy over all images. Image means are precomputed and each head's image
    order is cached, so selection callbacks only index numpy arrays."""

    sel = param.ClassSelector(class_=Selection, doc="the shared selection (a parameter, so methods can depend on it)")

    def __init__(self, data: StoreData, selection: Selection, **params) -> None:
        super().__init__(sel=selection, **params)
        self.data = data
        L, H = data.layers, data.heads
        self.colours = layer_colours(L)
        layer, head = np.divmod(np.arange(L * H), H)
        # Deterministic jitter: heads spread evenly across a column centred on their layer.
        offset = (head - (H - 1) / 2) * (JITTER / max(H, 1))
        self._lay, self._hd, self._x = layer, head, layer + offset  # [L·H] each
        self._valid = np.flatnonzero(data.valid)
        ok = data.valid
        # "All images" summaries, once: mean over readable images only.
        self._mean_entropy = np.nanmean(data.strength_entropy[ok], 0)  # [L, H]
        self._mean_distance = np.nanmean(data.attention_distance[ok], 0)  # [L, H]
        self._mean_strength = np.nanmean(data.strength[ok], 0)  # [L, H, hop]
        self._pos = np.full(data.images, -1)  # image index → row among valid images
        self._pos[self._valid] = np.arange(len(self._valid))
        self._orders: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # C3 sort, once per head

        dots = hv.DynamicMap(self.scatter)
        self.scatter_map = dots * hv.DynamicMap(self.scatter_mark)
        self.tap = hv.streams.Tap(source=dots, x=None, y=None)  # one element: taps on an Overlay's map are lost
        self.tap.param.watch(lambda *events: self.select(self.tap.x, self.tap.y), ["x", "y"])

    # -- pure helpers (tested without a browser) ------------------------------------------------

    def _image(self) -> int | None:
        """The selected image if it is readable; otherwise None (views fall back to the mean)."""
        i = self.sel.image
        return i if i is not None and 0 <= i < self.data.images and self.data.valid[i] else None

    def _head(self) -> tuple[int, int]:
        """Selected (layer, head), clipped to this store (the selection is shared with other stores' widgets)."""
        return (int(np.clip(self.sel.layer, 0, self.data.layers - 1)),
                int(np.clip(self.sel.head, 0, self.data.heads - 1)))

    def head_points(self) -> pd.DataFrame:
        """One row per head: x (jittered layer), y (entropy), layer, head, distance, colour."""
        i = self._image()
        ent = self._mean_entropy if i is None else self.data.strength_entropy[i]
        dist = self._mean_distance if i is None else self.data.attention_distance[i]
        return pd.DataFrame({"x": self._x, "y": ent.reshape(-1), "layer": self._lay, "head": self._hd,
                             "distance": dist.reshape(-1),
                             "colour": [self.colours[k] for k in self._lay]})

    def pick(self, x: float, y: float) -> tuple[int, int]:
        """(layer, head) of the point nearest to (x, y) in data space (NaN points are never picked)."""
        pts = self.head_points()
        d = (pts["x"].to_numpy() - x) ** 2 + (pts["y"].to_numpy() - y) ** 2
        k = int(np.nanargmin(np.where(np.isfinite(d), d, np.inf)))
        return int(self._lay[k]), int(self._hd[k])

    def select(self, x: float | None, y: float | None) -> tuple[int, int] | None:
        """Tap handler: write the nearest head into the shared selection (one event for both)."""
        if x is None or y is None:
            return None
        layer, head = self.pick(x, y)
        self.sel.param.update(layer=layer, head=head)
        return layer, head

    def hop_values(self) -> np.ndarray:
        """[p] k-hop strength of the selected head for the image, or the valid-image mean."""
        layer, head = self._head()
        i = self._image()
        return (self._mean_strength if i is None else self.data.strength[i])[layer, head]

    def entropy_series(self) -> EntropySeries:
        """The selected head's entropy over valid images, sorted ascending: the curve then reads as the
        distribution the paper's C3 shows (flat = consistent head) and the line's x is the image's rank,
        whereas image-index order is arbitrary and would look like noise."""
        layer, head = self._head()
        i = self._image()
        if (layer, head) not in self._orders:  # sorted lazily per head: [L, H, N] up front is large per session
            order = np.argsort(self.data.strength_entropy[self._valid, layer, head], kind="stable")  # [Nv]
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            self._orders[layer, head] = order, rank
        order, rank = self._orders[layer, head]
        current = None if i is None else int(rank[self._pos[i]])
        image = self._valid[order]
        return EntropySeries(image, self.data.strength_entropy[image, layer, head], current)

    def _who(self) -> str:
        i = self._image()
        if i is None:
            return "mean of all images" if self.sel.image is None else f"image {self.sel.image} unreadable: mean"
        return f"image {i}"

    # -- plots -----------------------------------------------------------------------------------

    @param.depends("sel.image", "sel.layer", "sel.head")
    def scatter(self) -> hv.Scatter:
        """C1: all heads of the image; tap selects the nearest head."""
        pts = self.head_points()
        tips = [("layer", "@layer"), ("head", "@head"), ("entropy", "@y{0.000}"),
                ("mean attention distance", "@distance{0.00}")]
        ticks = [(k, str(k)) for k in range(self.data.layers)]
        return hv.Scatter(pts, *self._dims()).opts(
            color="colour", size=9, line_color="white", tools=["hover", "tap"], hover_tooltips=tips, xticks=ticks,
            xlim=(-0.5, self.data.layers - 0.5), ylim=(-0.03, 1.05),
            title=f"Attention Strength View — all heads, {self._who()}", **PLOT)

    @param.depends("sel.image", "sel.layer", "sel.head")
    def scatter_mark(self) -> hv.Scatter:
        """A ring around the selected head in C1."""
        layer, head = self._head()
        row = self.head_points().iloc[[self.data.head_index(layer, head)]]
        return hv.Scatter(row, *self._dims()).opts(size=18, fill_alpha=0, line_color=SELECTED, line_width=3)

    @staticmethod
    def _dims() -> tuple[hv.Dimension, list]:
        return hv.Dimension("x", label="layer"), [hv.Dimension("y", label=ENTROPY_LABEL), "layer", "head", "distance",
                                                  "colour"]

    @param.depends("sel.image", "sel.layer", "sel.head")
    def bars(self) -> hv.Bars:
        """C2: the selected head's attention strength over k-hop neighbours."""
        layer, head = self._head()
        vals = self.hop_values()
        return hv.Bars((np.arange(len(vals)), vals), hv.Dimension("k", label="k-hop neighbours"),
                       hv.Dimension("strength", label="attention strength")).opts(
            title=f"Attention strength vector — L{layer}H{head}, {self._who()}", color=self.colours[layer],
            tools=["hover"], **PLOT)

    @param.depends("sel.image", "sel.layer", "sel.head")
    def area(self) -> hv.Overlay:
        """C3: the selected head's entropy over all images (sorted), line at the current image."""
        layer, head = self._head()
        s = self.entropy_series()
        x = np.arange(len(s.entropy))
        frame = pd.DataFrame({"rank": x, "entropy": s.entropy})
        # One value dimension only: an Area's second one is its baseline (it filled up to the image index).
        curve = hv.Area(frame, hv.Dimension("rank", label="images, sorted by entropy"),
                        hv.Dimension("entropy", label=ENTROPY_LABEL, range=(0, 1))).opts(
            color=self.colours[layer], fill_alpha=0.5, tools=["hover"])
        # Always one VLine so the overlay keeps its structure; hidden when no image is selected.
        line = hv.VLine(0 if s.current is None else s.current).opts(
            color=SELECTED, line_width=2, line_alpha=0 if s.current is None else 1)
        who = "all images" if s.current is None else f"image {self._image()} at rank {s.current}"
        return (curve * line).opts(title=f"Strength entropy over all images — L{layer}H{head}, {who}", **PLOT)

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            pane(self.scatter_map, sizing_mode="stretch_width", css_classes=["vs-strength-scatter"]),
            pn.Row(pane(hv.DynamicMap(self.bars), sizing_mode="stretch_width"),
                   pane(hv.DynamicMap(self.area), sizing_mode="stretch_width")),
            sizing_mode="stretch_width",
        )
