"""The report as a PDF (`vitscope report STORE --out report.pdf`): the same sections, figures and tables as the
HTML page, typeset on A4 pages by matplotlib (no browser, no LaTeX, offline)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import holoviews as hv
import matplotlib
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from vitscope.plots.render import PRINT_RC, render
from vitscope.text import printable

A4 = (8.27, 11.69)  # inches
MARGIN = 0.08  # of the page, each side
TABLE_ROWS = 40  # a longer table is cut, saying how many rows it had


class Pages:
    """Text laid out top to bottom on A4 pages, a new page when one is full."""

    def __init__(self, pdf: PdfPages) -> None:
        self.pdf, self.fig, self.y = pdf, None, 0.0

    def line(self, text: str, size: float = 9, step: float | None = None, **kw) -> None:
        step = step or size * 1.45 / 72 / A4[1]  # line height as a share of the page
        self.room(step)
        self.fig.text(MARGIN, self.y, text, fontsize=size, va="top", **kw)
        self.y -= step

    def paragraph(self, text: str, size: float = 9) -> None:
        for line in textwrap.wrap(text, width=int(105 * 9 / size)):
            self.line(line, size)
        self.line("", size)

    def table(self, rows: list[list[str]]) -> None:
        if not rows:
            return
        shown = [[printable(c, 40) for c in r] for r in rows[:TABLE_ROWS + 1]]
        widths = [max(len(r[k]) for r in shown if k < len(r)) for k in range(len(shown[0]))]
        for n, r in enumerate(shown):
            self.line("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)), 7, family="monospace",
                      weight="bold" if n == 0 else "normal")
        if len(rows) > TABLE_ROWS + 1:
            self.line(f"… {len(rows) - TABLE_ROWS - 1} more rows (the HTML report has them all)", 7)
        self.line("", 7)

    def figure(self, element) -> None:
        """An element drawn across the text column, below the text so far (a new page when it does not fit)."""
        import numpy as np
        from PIL import Image

        png = render(element, io.BytesIO(), "png", dpi=200)
        png.seek(0)
        pixels = np.asarray(Image.open(png).convert("RGB"))
        h, w = pixels.shape[:2]
        width = (1 - 2 * MARGIN) * (1.0 if isinstance(element, hv.Layout) else 0.6)  # one panel: not poster-size
        height = min(width * h / w * A4[0] / A4[1], 1 - 2 * MARGIN)  # as a share of the page's height
        self.room(height)
        ax = self.fig.add_axes((MARGIN, self.y - height, width, height))
        ax.imshow(pixels, interpolation="lanczos")
        ax.set_axis_off()
        self.y -= height + 0.015

    def room(self, height: float) -> None:
        """Start a new page unless `height` (a share of the page) fits below the text so far."""
        if self.fig is None or self.y - height < MARGIN:
            self.flush()
            self.fig, self.y = Figure(figsize=A4), 1 - MARGIN

    def flush(self) -> None:
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.fig = None


def write_pdf(title: str, source: str, parts, elements: Callable[[str], list], out: Path | BinaryIO,
              ) -> Path | BinaryIO:
    """`parts` as `html()` takes them; `elements(key)` → the section's HoloViews elements (drawn at 200 dpi)."""
    with matplotlib.rc_context(PRINT_RC), PdfPages(out) as pdf:
        pages = Pages(pdf)
        pages.paragraph(title, 14)
        pages.paragraph(f"vitscope report of {source}. Every sentence is computed from the store.", 8)
        for key, heading, sentences, rows in parts:
            pages.line(heading, 11, weight="bold")
            pages.paragraph(" ".join(sentences))
            pages.table(rows)
            for element in elements(key):
                pages.figure(element)
        pages.flush()
    return out
