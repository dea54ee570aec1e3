"""Where the decision comes from, in the Attention Pattern View's image panel: a patch map over the image, and the
image's faithfulness curves (`vitscope explain` in the page).

The three maps a build keeps (attention, rollout, grad_rollout) come from the store, so an image change redraws the
overlay at once without the model. Occlusion and the curves need a forward per patch or mask: the model computes
them only once the user asks (the "occlusion + curves" toggle, or picking occlusion), then for each image change
while it stays on, one request per image in the slow lane (the latest wins). Asked on every image change they would
keep the model busy for every session's browsing, beside the attention each image change needs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, LinearColorMapper

from vitscope.app.asking import Asker, Submit
from vitscope.app.style import bokeh_pane, div, figure, text_pane
from vitscope.readout.input_maps import (
    CHOICES,
    DIRECTION_NAMES,
    NONE,
    SIGNED,
    auc_table,
    colour_range,
    curve_rows,
    overlay_values,
    stored_or_none,
)
from vitscope.readout.palette import DIVERGING, MAP_COLOURS, SELECTED, VALUE_RAMP
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.text import esc
from vitscope.vocab import EXPLAIN_DIRECTIONS, EXPLAIN_METHODS, STORED_MAPS

WIDTH = 220  # the side panel's
ALPHA = 0.6  # the overlay's opacity: the image stays readable under it
REBUILD = "the stored maps need a rebuild (this store predates them)"
LABEL = "label" if "label" in pn.widgets.Toggle.param else "name"  # Panel 1.9 deprecates a widget's `name`
NO_TARGET = "not in this store (no classifier or probe)"


class InputMapPanel:
    """The map selector and overlay (on the first panel of the masks figure) and the faithfulness curves."""

    watches = ("image",)

    def __init__(self, data: StoreData, sel: Selection, image_figure, submit: Submit,
                 schedule: Callable[[Callable[[], None]], None]) -> None:
        self.data, self.sel = data, sel
        p = data.grid
        self.answer: dict | None = None  # the model's explain answer for the image shown
        self.mapper = LinearColorMapper(palette=list(VALUE_RAMP), low=0.0, high=1.0, nan_color=(0, 0, 0, 0))
        self.overlay = ColumnDataSource({"image": [np.full((p, p), np.nan, np.float32)]}, name="vs-input-overlay")
        self.renderer = image_figure.image("image", x=0, y=0, dw=1, dh=1, source=self.overlay,
                                           color_mapper=self.mapper, global_alpha=ALPHA, visible=False,
                                           name="vs-input-map-glyph")
        self.asker = Asker(submit, schedule, "explain", WIDTH, "vs-explain-status", on_fail=self.failed)
        self.choice = pn.widgets.Select(options=self._options(), value=NONE, width=135, margin=(0, 4),
                                        css_classes=["vs-input-map"])
        self.choice.param.watch(lambda e: self.pick(e.new), "value")
        self.follow = pn.widgets.Toggle(**{LABEL: "occlusion + curves"}, value=False, width=105, margin=(0, 4),
                                        css_classes=["vs-explain"])
        self.follow.param.watch(lambda e: self.set_follow(e.new), "value")
        self.note = div(350, 28, css_classes=["vs-input-note"])
        self.note.styles = {**self.note.styles, "font-size": "11px"}

        self.curve_sources = {(m, d): ColumnDataSource({"x": [], "y": []}) for m in EXPLAIN_METHODS
                              for d in EXPLAIN_DIRECTIONS}
        fig = figure("faithfulness", WIDTH, 190, tools="", x_range=(0, 0.9), y_range=(0, 1.02), name="vs-faithfulness")
        fig.toolbar_location = None
        for (m, d), src in self.curve_sources.items():
            dashed = d == "least_relevant_first"
            fig.line("x", "y", source=src, color=MAP_COLOURS[m], line_width=2,
                     line_dash="dashed" if dashed else "solid", **({} if dashed else {"legend_label": m}))
        fig.legend[0].update(location="top_right", label_text_font_size="9px", padding=1, spacing=0, margin=2,
                             glyph_width=14, label_standoff=2, background_fill_alpha=0.6)
        fig.xaxis.axis_label = "patches removed (solid: most relevant first, dashed: least)"
        fig.yaxis.axis_label = "P[target]"
        self.curves = fig
        self.table = div(WIDTH, 92, css_classes=["vs-faithfulness-table"])
        self.slot = pn.Column(margin=0)  # the curves join the page with their first answer (`_reveal`)
        self.update()

    # -- the selector -----------------------------------------------------------------------------

    def _options(self) -> dict[str, str]:
        """Label → method; occlusion says whether the model has it, is computing it, or has not been asked."""
        def label(m: str) -> str:
            if m != "occlusion":
                return m
            if self.answer is not None and self.answer["image"] == self.sel.image:
                return m
            return f"{m} (computing…)" if self.asker.computing else f"{m} (model)"
        return {label(m): m for m in CHOICES}

    def _relabel(self) -> None:
        options = self._options()
        if list(options) != list(self.choice.options):
            self.choice.options = options

    def pick(self, method: str) -> None:
        """Overlay `method`'s map of the selected image; occlusion asks the model first."""
        if method == "occlusion" and not self.follow.value:
            self.follow.value = True  # asks (`set_follow`), then draws when the answer comes
        self.draw()

    def set_follow(self, on: bool) -> None:
        if on:
            self.ask()
        else:
            self.asker.forget()
            self._relabel()

    # -- requests ---------------------------------------------------------------------------------

    def ask(self):
        """One explain request for the selected image (all four maps and their curves)."""
        image = self.data.readable(self.sel.image)
        if image is None:
            return None
        fut = self.asker.ask({"kind": "explain", "image": int(image)}, self.show, f"explaining image {image}")
        self._relabel()
        return fut

    def failed(self) -> None:
        """The explain request failed: its line replaces the note."""
        self._relabel()
        self.draw()

    def show(self, r: dict) -> None:
        """The model's answer: the curves, their AUCs, and occlusion in the selector."""
        if r["image"] != self.data.readable(self.sel.image):
            return
        self.answer = r
        rows = curve_rows(r)
        for key, xy in rows.items():
            self.curve_sources[key].data = xy
        top = max((max(xy["y"]) for xy in rows.values()), default=1.0)
        self.curves.y_range.update(start=0, end=max(top, 0.01) * 1.08)  # a wrong image's P[target] is small
        for key in set(self.curve_sources) - set(rows):
            self.curve_sources[key].data = {"x": [], "y": []}
        self.curves.title.text = f"faithfulness, image {r['image']} (target {esc(self._class(r['target']))})"
        self.table.text = table_html(r)
        self._relabel()
        if not self.slot.objects:
            self.slot.extend([bokeh_pane(self.curves), text_pane(self.table)])
        if self.choice.value == "occlusion":  # last: its map showing is the sign that the whole answer is in
            self.draw()

    def _class(self, c: int) -> str:
        names = self.data.class_names
        return names[c] if 0 <= c < len(names) else str(c)

    # -- drawing ----------------------------------------------------------------------------------

    def patch_map(self, method: str) -> tuple[np.ndarray | None, str]:
        """([p, p] raw map of the selected image or None, why not)."""
        image = self.data.readable(self.sel.image)
        if image is None:
            return None, ""
        if method in STORED_MAPS:
            if not self.data.has_input_maps:
                return None, REBUILD
            m = stored_or_none(self.data.input_maps(image), method)
            return (None, f"{method}: {NO_TARGET}") if not np.isfinite(m).any() else (m, "")
        a = self.answer
        if a is not None and a["image"] == image and method in a["maps"]:
            p = self.data.grid
            return np.asarray(a["maps"][method], np.float32).reshape(p, p), ""
        return None, f"{method}: computing…" if self.asker.computing else f"{method}: ask the model (the toggle)"

    def draw(self) -> None:
        """The chosen map over the image (hidden for none, or while there is none), and the line that says what it is
        or why it is not there."""
        method = self.choice.value
        m, why = (None, REBUILD if not self.data.has_input_maps else "") if method == NONE else self.patch_map(method)
        if self.asker.error:
            why = self.asker.error
        if m is None:
            self.renderer.visible = False
            colour = SELECTED if self.asker.error else "#666"
            self.note.text = f"<span style='color:{colour}'>{esc(why, limit=300)}</span>" if why else ""
            return
        low, high = colour_range(method, m)
        palette = list(DIVERGING if method in SIGNED else VALUE_RAMP)
        if self.mapper.palette != palette:
            self.mapper.palette = palette
        self.mapper.update(low=low, high=high)
        self.overlay.data = {"image": [overlay_values(m)]}
        self.renderer.visible = True
        scale = "blue − / yellow +" if method in SIGNED else "bright = high"
        self.note.text = f"<b>{esc(method)}</b> {low:.3g} … {high:.3g} (raw; {scale})"

    def update(self, changed: set[str] | None = None) -> None:
        """An image change: the stored map at once; the model is asked only while the toggle is on."""
        if changed is None or "image" in changed:
            if self.answer is not None and self.answer["image"] != self.data.readable(self.sel.image):
                self.answer = None
                for src in self.curve_sources.values():
                    src.data = {"x": [], "y": []}
                self.table.text = ""
            if self.follow.value and self.answer is None:
                self.ask()
            self._relabel()
            self.draw()

    def controls(self) -> pn.Column:
        """Under the image panel: the selector row, the model's progress, and what the overlay shows (or why not)."""
        return pn.Column(pn.Row(self.choice, self.follow, margin=0), self.asker.progress, text_pane(self.note),
                         margin=0)

    def side(self) -> pn.Column:
        """In the side panel: the image's curves and their AUCs once the model has answered."""
        return pn.Column(self.slot, margin=0)


def table_html(r: dict) -> str:
    """The AUCs of one image: a row per method, ★ on the most faithful per direction (low AUC most relevant first,
    high least relevant first)."""
    head = "".join(f"<th>{esc(DIRECTION_NAMES[d])}</th>" for d in EXPLAIN_DIRECTIONS)
    rows = []
    for m, auc, wins in auc_table(r):
        cells = "".join(f"<td>{auc[d]:.3f}{' ★' if d in wins else ''}</td>" for d in EXPLAIN_DIRECTIONS)
        rows.append(f"<tr><td style='color:{MAP_COLOURS[m]}'><b>{esc(m)}</b></td>{cells}</tr>")
    return (f"<table style='font-size:10px;border-collapse:collapse'><tr><th>AUC</th>{head}</tr>{''.join(rows)}"
            "</table><div style='font-size:10px;color:#666'>★ most faithful: lowest AUC most relevant first, "
            "highest least relevant first</div>")
