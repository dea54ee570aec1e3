"""The app's "save figure" action: any view or store summary of the current selection as an SVG, PDF or PNG file
for a paper, downloaded by the browser.

The figures are vitscope.plots' (what `vitscope figure` writes), and vitscope.plots reads the app's data layer, so
the app cannot import it: whoever starts the app passes its `figure_bytes` in (`vitscope serve`,
apps/vitscope_app.py). HoloViews and matplotlib then load on the first click, not with the page.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import panel as pn

from vitscope.app.data import StoreData
from vitscope.app.state import Selection
from vitscope.app.style import light
from vitscope.errors import one_line
from vitscope.vocab import FIGURE_FORMATS

# vitscope.plots.FIGURES' names, the views first (tests/test_plots.py checks that the two agree); those of one
# image need an image.
FigureBytes = Callable[..., bytes]  # (data, name, fmt, image, layer, head, attention) → the file's bytes
NEEDS_IMAGE = ("binary-map", "heatmap", "two-axes", "masks")
FIGURE_NAMES = ("importance", "modes", "strength", "strength-vector", "entropy", "overview", "pattern-map",
                *NEEDS_IMAGE, "importance-matrix", "layer-trends", "pattern-kinds", "proxy-vs-exact")


class SaveFigure:
    """A figure chooser, a format and a download button for one session's selection."""

    def __init__(self, data: StoreData, selection: Selection, attention: Callable[[int], np.ndarray],
                 make: FigureBytes, width: int) -> None:
        self.data, self.selection, self.attention, self.make = data, selection, attention, make
        self.which = pn.widgets.Select(options=list(FIGURE_NAMES), value="importance", width=width - 10,
                                       css_classes=["vs-save-which"])
        self.format = pn.widgets.RadioButtonGroup(options=list(FIGURE_FORMATS), value="svg", width=width - 10,
                                                  **light())
        self.button = pn.widgets.FileDownload(callback=self.file, filename="importance.svg", label="save figure",
                                              width=width - 10, css_classes=["vs-save-figure"], **light())
        self.which.param.watch(self._follow, ["value"])
        self.format.param.watch(self._follow, ["value"])
        self._follow()

    watches = ("image", "layer", "head")  # followed as one of the Explorer's views: inside its one held change

    def update(self, changed: set[str] | None = None) -> None:
        self._follow()

    def filename(self) -> str:
        s = self.selection
        image = "all-images" if s.image is None else f"image{s.image}"
        return f"{self.which.value}-{image}-L{s.layer}H{s.head}.{self.format.value}"

    def _follow(self, *_) -> None:
        needs = self.which.value in NEEDS_IMAGE and self.selection.image is None
        self.button.param.update(filename=self.filename(), disabled=needs,
                                 label="pick an image first" if needs else "save figure")

    def file(self) -> io.BytesIO | None:
        """The chosen figure of the current selection, rendered for print (the download's content)."""
        s = self.selection
        try:
            return io.BytesIO(self.make(self.data, self.which.value, self.format.value, s.image, s.layer, s.head,
                                        self.attention))
        except Exception as e:  # noqa: BLE001 - one line in the page, never a traceback
            s.message = f"save figure: {one_line(e)}"
            return None

    def panel(self) -> pn.Column:
        return pn.Column(self.which, self.format, self.button, margin=0)
