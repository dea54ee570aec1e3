"""The paper's Image Overview (Fig. 1 A): all images on the tSNE of their head-importance vectors.

Colour by class (a legend up to 20 classes), by correct/wrong top-1, or by P[true]; a chosen class is
highlighted (or alone); hover names the class; tap or type an id to select an image.
"""

from __future__ import annotations

import numpy as np
from bokeh.events import Tap
from bokeh.layouts import column, row
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, Label, LinearColorMapper
from scipy.spatial import cKDTree

from vitscope.app.session import guarded, poll_layouts
from vitscope.app.style import MAX_LEGEND, div, downsized, figure, rgba_image
from vitscope.errors import VitscopeError
from vitscope.readout.palette import CORRECT, NO_VALUE, SELECTED, VALUE_RAMP, WRONG, class_colours, value_colours
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData, padded_bounds
from vitscope.text import esc
from vitscope.vocab import LINEAR_PROBE, MODE_NAMES, NO_BASIS, head_name


def top5_html(data: StoreData, image: int, layer: int, head: int, mode: int) -> str:
    """Top-5 predictions under the given pruning, the true label in bold (a backbone's: its linear probe's)."""
    if data.prob_basis == NO_BASIS:
        return "<div style='font-size:12px'><i>top-5: no class probabilities (a backbone without labels)</i></div>"
    idx = data.topk_idx[image, layer, head, mode]
    prob = data.topk_prob[image, layer, head, mode]
    true = int(data.label[image])
    rows = []
    for c, p in zip(idx.tolist(), prob.tolist(), strict=True):
        name = esc(data.class_names[c]) if 0 <= c < len(data.class_names) else str(c)
        cell = f"<b>{name}</b>" if c == true else name
        rows.append(f"<tr><td>{cell}</td><td style='text-align:right;padding-left:6px'>{p:.3f}</td></tr>")
    where = "unpruned" if mode == 0 else f"{head_name(layer, head)} pruned, mode {mode} ({MODE_NAMES[mode]})"
    return (f"<div style='font-size:12px'><i>top-5, {where}</i><table style='border-spacing:0;line-height:1.25'>"
            f"{''.join(rows)}</table></div>")


def p_true(data: StoreData, image: int) -> str:
    """The detail line's P[true]: the classifier's or the probe's, or why there is none."""
    if data.prob_basis == NO_BASIS:
        return "P[true] unavailable (no class basis)"
    what = "P[true] (linear probe)" if data.prob_basis == LINEAR_PROBE else "P[true]"
    return f"{what} {data.baseline_prob[image]:.3f}"


def point_colours(data: StoreData, colour_by: str) -> tuple[np.ndarray, np.ndarray]:
    """(colour, legend text) of every image for one colouring ('class', 'correct' or 'P[true]')."""
    if colour_by == "class":
        present = data.classes_present
        lut = np.full(len(data.class_names), NO_VALUE, dtype=object)  # class index → colour
        lut[present] = class_colours(len(present))
        label = np.clip(data.label, 0, len(data.class_names) - 1)  # unreadable images hold -1
        return lut[label], np.asarray(data.class_names, dtype=object)[label]
    if colour_by == "correct":
        return np.where(data.correct, CORRECT, WRONG), np.where(data.correct, "top-1 right", "top-1 wrong")
    return value_colours(data.baseline_prob), np.full(data.images, "")


def overview_columns(data: StoreData, colour_by: str, cls: int | None, only_class: bool) -> dict[str, np.ndarray]:
    """The varying columns of the Image Overview's points: colour, legend, alpha, size."""
    colour, legend = point_colours(data, colour_by)
    chosen = data.class_images(cls) if cls is not None else data.valid
    dim = 0.0 if only_class else 0.12
    alpha = np.where(chosen, 0.85, dim) if cls is not None else np.full(data.images, 0.75)
    size = np.where(chosen & (cls is not None), 9.0, 0.0 if only_class and cls is not None else 6.0)  # 0: no hover
    ok = data.placed
    return {"colour": colour[ok], "legend": legend[ok], "alpha": alpha[ok], "size": size[ok]}


class ImageOverview:
    """Scatter of all images plus the selected image with its unpruned top-5."""

    watches = ("image", "colour_by", "cls", "only_class")

    def __init__(self, data: StoreData, sel: Selection, width: int = 370, height: int = 275) -> None:
        self.data, self.sel = data, sel
        self.source = ColumnDataSource(name="vs-overview-points")
        fig = figure("Image Overview", width, height, name="vs-overview-fig",
                     tools="pan,wheel_zoom,box_zoom,reset", x_range=(-1, 1), y_range=(-1, 1), bare=True)
        self.figure = fig
        self.note = Label(x=width / 2, y=height / 2, x_units="screen", y_units="screen", text="", text_align="center",
                          text_font_size="13px", text_color="#666666")  # "computing layout…" until it is in
        fig.add_layout(self.note)
        self._place()
        dots = fig.scatter("x", "y", source=self.source, color="colour", alpha="alpha", size="size",
                           line_color=None, legend_field="legend")
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[("image", "@image  @id"), ("class", "@label"),
                                                            ("P[true]", "@p{0.000}"), ("top-1", "@pred")]))
        self.marker = ColumnDataSource({"x": [], "y": []}, name="vs-overview-marker")
        # "overlay": moving the marker repaints only the overlay canvas, not the 10,000 points under it
        fig.scatter("x", "y", source=self.marker, size=16, fill_alpha=0, line_color=SELECTED, line_width=3,
                    level="overlay")
        self.colour_bar = ColorBar(color_mapper=LinearColorMapper(palette=VALUE_RAMP, low=0, high=1), width=8,
                                   title="P[true]", visible=False)
        fig.add_layout(self.colour_bar, "right")
        legend = fig.legend[0]
        fig.add_layout(legend, "right")  # beside the points, not over them
        legend.update(label_text_font_size="10px", glyph_height=12, glyph_width=12, label_height=12, padding=2,
                      spacing=0, margin=2, border_line_alpha=0)
        fig.on_event(Tap, guarded(sel, "image tap", lambda e: self.pick(e.x, e.y)))

        # A blank of the real (shown) size: Bokeh keeps an image glyph's first resolution across updates.
        self.blank = np.zeros(downsized(np.zeros(data.thumb_shape, np.uint8)).shape[:2], np.uint32)
        self.thumb_source = ColumnDataSource({"image": [self.blank]})
        thumb = figure("", 100, 100, tools="", x_range=(0, 1), y_range=(0, 1), bare=True)
        thumb.toolbar_location = None
        thumb.image_rgba("image", x=0, y=0, dw=1, dh=1, source=self.thumb_source)
        thumb.min_border = 0
        self.thumb, self.detail = thumb, div(width - 110, 150)
        self.update()
        self._poll = poll_layouts(data, {"image_xy"}, self.layouts_arrived, lambda line: setattr(sel, "message", line))

    def _place(self) -> None:
        """The points, their KD-tree and the ranges from the store's layout (none while it is computed)."""
        data, sel = self.data, self.sel
        ok = data.placed
        xy = data.image_xy[ok]
        self._index, self._tree = ok, cKDTree(xy)
        x0, y0, x1, y1 = padded_bounds(xy)
        pred = data.topk_idx[ok, 0, 0, 0, 0]
        self.source.data = {
            "x": xy[:, 0], "y": xy[:, 1], "image": ok, "id": [data.image_ids[i] for i in ok],
            "label": [data.class_names[int(c)] for c in data.label[ok]],
            "pred": [data.class_names[int(c)] if 0 <= c < len(data.class_names) else str(c) for c in pred],
            "p": data.baseline_prob[ok], **overview_columns(data, sel.colour_by, sel.cls, sel.only_class)}
        self.figure.x_range.update(start=x0, end=x1)
        self.figure.y_range.update(start=y0, end=y1)
        self.note.text = data.layout_note("image_xy")

    def layouts_arrived(self, names: set[str]) -> None:
        """The layout was computed after this page opened: draw it (and the selected image's marker)."""
        if "image_xy" in names:
            self._place()  # its columns include the colours
            self.update({"image"})

    def pick(self, x: float | None, y: float | None) -> int | None:
        """Select the shown image nearest to (x, y) (only the chosen class's when it is shown alone)."""
        if x is None or y is None or not len(self._index):
            return None
        if self.sel.cls is not None and self.sel.only_class:
            mine = np.flatnonzero(self.data.label[self._index] == self.sel.cls)
            if not len(mine):
                return None
            d = ((self.data.image_xy[self._index[mine]] - [x, y]) ** 2).sum(1)
            image = int(self._index[mine[np.argmin(d)]])
        else:
            image = int(self._index[self._tree.query([x, y])[1]])
        self.select(image)
        return image

    def select(self, image: int | None) -> None:
        """Select an image by index (None = all images); an unknown or unreadable one is a page message."""
        if image is None:
            self.sel.image = None
            return
        try:
            self.sel.param.update(image=self.data.check_image(int(image)), message="")
        except VitscopeError as e:
            self.sel.message = str(e)

    def update(self, changed: set[str] | None = None) -> None:
        d, s = self.data, self.sel
        if changed is None or changed & {"colour_by", "cls", "only_class"}:
            self.source.data.update(overview_columns(d, s.colour_by, s.cls, s.only_class))
            many = s.colour_by == "class" and len(d.classes_present) > MAX_LEGEND
            self.figure.legend.visible = s.colour_by != "P[true]" and not many
            self.colour_bar.visible = s.colour_by == "P[true]"
            chosen = "" if s.cls is None else f", class {d.class_names[s.cls]!r}"
            self.figure.title.text = f"Image Overview — {int(d.valid.sum())} images by {s.colour_by}{chosen}"
            if d.prob_basis == NO_BASIS:  # laid out by a feature metric: the store has no class probabilities
                self.figure.title.text += f" (layout by {d.layout_metric}: no class basis)"
        if changed is None or "image" in changed:
            i = d.readable(s.image)
            placed = i is not None and bool(np.isfinite(d.image_xy[i]).all())  # not while its layout is computed
            self.marker.data = {"x": [float(d.image_xy[i, 0])] if placed else [],
                                "y": [float(d.image_xy[i, 1])] if placed else []}
            if i is None:
                self.detail.text = "<i>Tap a point or type an image id to select an image.</i>"
                self.thumb_source.data = {"image": [self.blank]}  # the masks show it too
                return
            self.thumb_source.data = {"image": [rgba_image(downsized(d.thumbnail(i)))]}
            true = esc(d.class_names[int(d.label[i])])
            name = esc(d.image_ids[i].rsplit("/", 1)[-1])  # the file name: a full path wraps
            self.detail.text = (f"<div style='font-size:12px'><b>image {i}</b> <code>{name}"
                                f"</code><br>true label <b>{true}</b> · {p_true(d, i)}</div>"
                                + top5_html(d, i, 0, 0, 0))

    def bokeh(self):
        """The view as one Bokeh layout (export)."""
        return column(self.figure, row(self.thumb, self.detail))
