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
from vitscope.vocab import FIGURE_FORMATS


class SaveFigure:
    """A figure chooser, a format and a download button for one session's selection."""

    watches = ("image", "layer", "head")  # followed as one of the Explorer's views: inside its one held change

    def __init__(self, data: StoreData, selection: Selection, attention: Callable[[int], np.ndarray],
                 render: Renderer, width: int) -> None:
        self.data, self.selection, self.attention, self.render = data, selection, attention, render
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
        needs = FIGURES[self.which.value].needs_image and self.selection.image is None
        self.button.param.update(filename=self.filename(), disabled=needs,
                                 label="pick an image first" if needs else "save figure")

    def file(self) -> io.BytesIO | None:
        """The chosen figure of the current selection, rendered for print (the download's content); the image's
        attention is asked of the model only by the figures that show it."""
        s, name = self.selection, self.which.value
        try:
            att = self.attention(s.image) if FIGURES[name].needs_attention and s.image is not None else None
            t = target(name, self.data, s.image, s.layer, s.head, att)
            return io.BytesIO(self.render(name, self.format.value, t))
        except Exception as e:  # noqa: BLE001 - one line in the page, never a traceback
            s.message = f"save figure: {one_line(e)}"
            return None

    def panel(self) -> pn.Column:
        return pn.Column(self.which, self.format, self.button, margin=0)
