"""Save a HoloViews element as a print figure (SVG, PDF or PNG) through HoloViews' matplotlib backend.

Print styling, applied to a copy of the element: a sans-serif face at 7–9 pt, text kept as text in SVG and
PDF (editable, searchable), no toolbars (matplotlib has none), a tight bounding box. The figures' own colours
are already colour-blind-safe (`palette.py`). `vitscope figure` and notebooks call `render`; `FIGURES`
(`figures.py`) names what to render.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import holoviews as hv
import matplotlib

from vitscope.vocab import FIGURE_FORMATS as FORMATS

FONT_SIZES = {"title": 9, "labels": 8, "xticks": 7, "yticks": 7, "legend": 7, "cticks": 7, "clabel": 8}
PRINT_RC = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica", "Liberation Sans"],
    "font.size": 8,
    "text.parse_math": False,  # titles carry class names and image ids: a `$` in one is a dollar, not mathtext
    "svg.fonttype": "none",  # text stays text in the SVG
    "pdf.fonttype": 42,  # TrueType in the PDF: editable, and what journals ask for
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
}


def print_styled(element: hv.core.Dimensioned) -> hv.core.Dimensioned:
    """A copy of `element` (any element, overlay or layout) with the print font sizes on every plot in it."""
    if isinstance(element, hv.DynamicMap):  # e.g. a datashaded map: its first frame, at its full extent
        element = element[()]
    return element.map(lambda e: e.opts(backend="matplotlib", fontsize=FONT_SIZES, clone=True),
                       [hv.Element, hv.Overlay])


def render(element: hv.core.Dimensioned, path: str | Path | BinaryIO, fmt: str | None = None, *, dpi: int = 300,
           size: tuple[float, float] | None = None) -> Path | BinaryIO:
    """Write `element` to `path` (a file name, or a binary file object such as BytesIO) as `fmt` (svg, pdf or
    png; default: the path's suffix) with print styling; `size` is (width, height) in inches, else what HoloViews
    lays out. Returns where it wrote."""
    if not hasattr(path, "write"):
        path = Path(path)
        fmt = fmt or path.suffix.lstrip(".")
    fmt = (fmt or "").lower()
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    with matplotlib.rc_context(PRINT_RC):
        fig = hv.render(print_styled(element), backend="matplotlib")
        if size is not None:
            fig.set_size_inches(*size)
        try:
            fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight")
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)
    return path
