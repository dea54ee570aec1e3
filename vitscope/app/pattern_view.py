"""The Attention Pattern View (paper Sec. 5.4.2, Fig. 1 D1–D5): the map of all heads (`pattern_map`), and
for the selected head its label, scores and distance, the two-axes view, heatmap and histogram
(`pattern_matrix`) and the image masks (`masks`).

Attention is not stored: it comes from `attention(image, layer)` ([H, P, P]; the app passes `Explorer.attention`),
asked once per image and layer shown and kept; a failed call is one line in the page, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource

from vitscope.app.masks import MaskPlot
from vitscope.app.pattern_map import PatternMap
from vitscope.app.pattern_matrix import MatrixPlots
from vitscope.app.session import guarded
from vitscope.app.style import div
from vitscope.errors import one_line
from vitscope.readout.attention import top_threshold
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.text import esc
from vitscope.vocab import BASE_PATTERNS, HEAD_KINDS, OFFSETS, PATTERNS

HINT = "Select an image (Image Overview, or tap a head in the map) to see a head's attention pattern."


def head_kind_text(data: StoreData, layer: int, head: int) -> str:
    """'positional head (agreement 0.62)': what the head is over the whole store (its maps' agreement across
    images); for a sink head, how much of its maps sits on which fixed patches; a store without the sink analysis
    says so."""
    k = int(data.head_kind[layer, head])
    if not 0 <= k < len(HEAD_KINDS):
        return "head kind unknown (fewer than 2 images)"
    text = f"{HEAD_KINDS[k]} head (agreement {float(data.head_consistency[layer, head]):.2f})"
    if not data.has_sinks:
        return text + " · sink analysis not in this store (rebuild it to add it)"
    if HEAD_KINDS[k] == "sink":
        where = sink_targets(data, layer, head)
        text += f": {float(data.head_sink_share[layer, head]):.0%} of its binarised maps' 1s on {where} in every image"
    return text


def sink_targets(data: StoreData, layer: int, head: int) -> str:
    """A head's most-hit target columns as '(row,col)' patches, or pooled-map columns for grids over 16 × 16."""
    cols = [int(t) for t in data.head_sink_tokens[layer, head] if t >= 0]
    if data.binary_size == data.grid**2:
        return "patches " + " ".join("({},{})".format(*divmod(t, data.grid)) for t in cols)
    return f"columns {', '.join(map(str, cols))} of the {data.binary_size}-wide pooled map"


def head_info(data: StoreData, image: int | None, layer: int, head: int) -> str:
    """HTML line: the head's pattern label (and second pattern) with its four scores, its mean attention distance
    and its kind across images."""
    if image is None:
        return f"<i>{HINT}</i>"
    if data.readable(image) is None:
        return f"image {image} is not a readable image of this store (0..{data.images - 1})"
    label, offset = int(data.pattern_label[image, layer, head]), int(data.pattern_offset[image, layer, head])
    second = int(data.pattern_second[image, layer, head])
    names = [PATTERNS[k] if 0 <= k < len(PATTERNS) else "—" for k in (label, second)]
    names = [f"{n} ({OFFSETS[offset]})" if n == "diagonal" and 0 <= offset < len(OFFSETS) else n for n in names]
    pattern = names[0] + (f" + {names[1]}" if second != PATTERNS.index("none") else "")
    scores = " ".join(f"{p} {s:.2f}" for p, s in zip(BASE_PATTERNS, data.pattern_score[image, layer, head],
                                                     strict=True))
    dist = float(data.attention_distance[image, layer, head])
    name = esc(data.image_ids[image].rsplit("/", 1)[-1])  # the file, as the Image Overview names it
    return (f"<b>image {name} · layer {layer} · head {head}</b> — pattern: <b>{pattern}</b> "
            f"<span style='color:#666'>(scores: {scores})</span> · mean attention distance: <b>{dist:.2f}</b> "
            f"patches · {head_kind_text(data, layer, head)}")


class AttentionPatternView:
    """The map, and the selected head's attention in linked plots."""

    watches = ("image", "layer", "head", "layout", "density", "threshold", "source_token", "target_token")

    def __init__(self, data: StoreData, sel: Selection, attention: Callable[[int, int], np.ndarray],
                 thumb_source: ColumnDataSource, raster: ColumnDataSource | None = None) -> None:
        self.data, self.sel, self._attention_fn = data, sel, attention
        self._held_image: int | None = None
        self._held: dict[int, np.ndarray] = {}  # layer → [H, P, P] of _held_image
        # The (image, layer) whose attention the model is computing while the other views are already drawn (the
        # served app: `Explorer`); until it arrives `update` leaves the plots of A as they are, then
        # `show_attention` draws them.
        self.pending: tuple[int, int] | None = None
        self.error = ""
        self.map = PatternMap(data, sel, raster=raster)
        self.matrix = MatrixPlots(data.num_prefix, data.tokens, on_token=guarded(sel, "token", self._on_token),
                                  on_threshold=guarded(sel, "threshold", lambda t: setattr(sel, "threshold", t)),
                                  on_cell=guarded(sel, "heatmap cell",
                                                  lambda s, t: sel.param.update(source_token=s, target_token=t)))
        self.masks = MaskPlot(thumb_source, data.num_prefix, data.grid)
        self.info = div(640, 44, css_classes=["vs-pattern-info"])
        self.update()

    def _on_token(self, token: int, source: bool) -> None:
        self.sel.param.update(**{"source_token" if source else "target_token": token})

    def has_attention_of(self, image: int, layer: int) -> bool:
        """Whether this view already holds the attention of `image` in `layer`: nothing to ask the model."""
        return image == self._held_image and layer in self._held

    def attention_matrix(self) -> np.ndarray | None:
        """A [P, P] of the selected head, or None (no image, or the attention call failed: see `error`)."""
        image, layer, head = self.sel.image, self.sel.layer, self.sel.head
        if image is None:
            self._held_image, self._held = None, {}
            if self.error and self.sel.message == self.error:
                self.sel.message = ""
            self.error = ""
            return None
        if not (0 <= layer < self.data.layers and 0 <= head < self.data.heads):
            return None
        if image != self._held_image:
            self._held_image, self._held = image, {}
        if layer not in self._held:  # a failed call is not kept: picked again, it is tried again
            previous = self.error
            try:
                self.data.check_image(int(image))
                att = np.asarray(self._attention_fn(int(image), int(layer)), dtype=np.float32)  # [H, P, P]
                want = (self.data.heads, self.data.tokens, self.data.tokens)
                if att.shape != want:
                    raise ValueError(f"attention of image {image} has shape {att.shape}, expected {want} per layer: "
                                     "the store and the model do not match")
                self._held[layer], self.error = att, ""
                if previous and self.sel.message == previous:
                    self.sel.message = ""
            except Exception as e:  # noqa: BLE001 - never raise into Panel: show one readable line
                self.error = f"attention of image {image}: {one_line(e)}"
                self.sel.message = self.error
                return None
        return self._held[layer][head]

    def threshold(self, A: np.ndarray | None = None) -> float:
        """The threshold in use: the selection's, or the value above which the store's top fraction lies."""
        t = self.sel.threshold
        if t is not None:
            return float(t)
        return top_threshold(self.attention_matrix() if A is None else A, self.data.top, self.data.num_prefix)

    def update(self, changed: set[str] | None = None) -> None:
        if changed is None or changed & set(PatternMap.watches):
            self.map.update(changed)
        if self.pending is None:
            self.show_attention(changed)
        else:  # the plots of A follow when it arrives (`show_attention`); the map and the label do not wait
            self._show_info()

    def show_attention(self, changed: set[str] | None = None) -> None:
        """Draw the selected head's A (two axes, heatmap, histogram, masks) and the label line."""
        s = self.sel
        A = self.attention_matrix()
        head_changed = changed is None or bool(changed & {"image", "layer", "head"})
        if changed is None or changed & {"image", "layer", "head", "threshold"}:
            self.matrix.show(A, self.threshold(A), head_changed)
        if changed is None or changed & {"image", "layer", "head", "source_token", "target_token"}:
            n = self.data.tokens
            self.masks.show(A, min(s.source_token, n - 1), min(s.target_token, n - 1))
        self._show_info()

    def _show_info(self) -> None:
        s = self.sel
        self.info.text = head_info(self.data, s.image, s.layer, s.head) + (
            f"<div style='color:#b00'>{esc(self.error, limit=400)}</div>" if self.error else "")

    def bokeh(self):
        m = self.matrix
        return row(self.map.figure, column(self.info, row(m.heatmap, self.masks.figure), row(m.axes, m.hist)))
