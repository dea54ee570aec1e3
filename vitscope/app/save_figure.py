"""The app's "save figure" action: any figure of the registry (`vitscope.readout.figures`) for the current
selection as an SVG, PDF or PNG file for a paper, downloaded by the browser.

The figures are drawn by `vitscope.plots` (HoloViews and matplotlib), which the app does not import: whoever starts
the app passes a renderer in (`vitscope serve`, `apps/vitscope_app.py`), and those libraries load on the first
click, not with the page.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import panel as pn

from vitscope.app.style import light_button
from vitscope.errors import one_line
from vitscope.readout.figures import FIGURES, Renderer, target
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.vocab import FIGURE_FORMATS, NO_BASIS


class SaveFigure:
    """A figure chooser, a format and a download button for one session's selection."""

    watches = ("image", "layer", "head")  # followed as one of the Explorer's views: inside its one held change

    def __init__(self, data: StoreData, selection: Selection, attention: Callable[[int], np.ndarray],
                 render: Renderer, width: int, explain: Callable[[int], dict] | None = None) -> None:
        self.data, self.selection, self.attention, self.render = data, selection, attention, render
        self.explain = explain  # an image's patch maps and faithfulness curves, from the model
        self.which = pn.widgets.Select(options=list(FIGURES), value="importance", width=width - 10,
                                       css_classes=["vs-save-which"])
        self.format = pn.widgets.RadioButtonGroup(options=list(FIGURE_FORMATS), value="svg", width=width - 10,
                                                  **light_button())
        self.button = pn.widgets.FileDownload(callback=self.file, filename="importance.svg", label="save figure",
                                              width=width - 10, css_classes=["vs-save-figure"], **light_button())
        self.which.param.watch(self._follow, ["value"])
        self.format.param.watch(self._follow, ["value"])
        self._follow()

    def update(self, changed: set[str] | None = None) -> None:
        self._follow()

    def filename(self) -> str:
        s = self.selection
        image = "all-images" if s.image is None else f"image{s.image}"
        return f"{self.which.value}-{image}-L{s.layer}H{s.head}.{self.format.value}"

    def _follow(self, *_) -> None:
        spec = FIGURES[self.which.value]
        needs = spec.needs_image and self.selection.image is None
        cannot = spec.needs_explain and (self.explain is None or self.data.prob_basis == NO_BASIS)
        old = spec.needs_effects and not self.data.has_effects
        self.button.param.update(filename=self.filename(), disabled=needs or cannot or old,
                                 label="needs P[target] (a class basis)" if cannot else
                                 "needs a store with head effects (rebuild)" if old else
                                 "pick an image first" if needs else "save figure")

    def file(self) -> io.BytesIO | None:
        """The chosen figure of the current selection, rendered for print (the download's content); the image's
        attention and explanation are asked of the model only by the figures that show them."""
        s, name = self.selection, self.which.value
        spec, image = FIGURES[name], s.image
        try:
            att = self.attention(image) if spec.needs_attention and image is not None else None
            expl = self.explain(image) if spec.needs_explain and image is not None and self.explain else None
            t = target(name, self.data, image, s.layer, s.head, att, expl)
            return io.BytesIO(self.render(name, self.format.value, t))
        except Exception as e:  # noqa: BLE001 - one line in the page, never a traceback
            s.message = f"save figure: {one_line(e)}"
            return None

    def panel(self) -> pn.Column:
        return pn.Column(self.which, self.format, self.button, margin=0)
