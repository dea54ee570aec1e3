"""The image with the source and target attention masks of the chosen tokens (paper Fig. 1 D2, Fig. 6 D–E).

The paper's transparency encoding: strongly attended patches stay clear, the rest of the image is dimmed
in proportion (an RGBA overlay of grid × grid pixels that Bokeh stretches over the image: only p² pixels
travel per token change; the image itself is the shared thumbnail, sent once per image).
"""

from __future__ import annotations

import numpy as np
from bokeh.models import ColumnDataSource

from vitscope.app.style import figure, rgba_image
from vitscope.readout.attention import token_masks, token_name
from vitscope.readout.palette import SELECTED

GAP = 0.06  # between the three panels, in image widths
DIM = 0.85  # opacity of the dimming over a patch the token does not attend at all


def dimming(mask: np.ndarray) -> np.ndarray:
    """[grid, grid] → RGBA uint32 overlay: black, opacity DIM·(1 − a / max a): strong attention stays clear."""
    a = mask / max(float(mask.max()), 1e-12)
    alpha = np.round(DIM * (1.0 - np.clip(a, 0, 1)) * 255).astype(np.uint8)
    pixels = np.zeros((*mask.shape, 4), np.uint8)
    pixels[..., 3] = alpha
    return rgba_image(pixels)


class MaskPlot:
    """Image · image with the source mask · image with the target mask, side by side in one figure."""

    def __init__(self, thumb_source: ColumnDataSource, prefix: int, grid: int, height: int = 125) -> None:
        self.prefix, self.grid = prefix, grid
        width = int(round(height * (3 + 2 * GAP) * 0.9))
        fig = figure("image · source mask · target mask", width, height + 30, tools="", name="vs-masks-fig",
                     x_range=(0, 3 + 2 * GAP), y_range=(0, 1), bare=True)
        fig.toolbar_location = None
        for k in range(3):
            fig.image_rgba("image", x=k * (1 + GAP), y=0, dw=1, dh=1, source=thumb_source)
        blank = dimming(np.ones((grid, grid)))
        self.overlay = ColumnDataSource({"image": [blank, blank], "x": [1 + GAP, 2 + 2 * GAP]})
        fig.image_rgba("image", x="x", y=0, dw=1, dh=1, source=self.overlay)
        self.outline = ColumnDataSource({"x": [], "y": []})
        fig.rect("x", "y", width=1 / grid, height=1 / grid, source=self.outline, fill_alpha=0, line_color=SELECTED,
                 line_width=2)
        self.figure = fig

    def show(self, A: np.ndarray | None, source: int, target: int) -> None:
        p = self.grid
        if A is None:
            blank = dimming(np.ones((p, p)))
            self.overlay.data = {"image": [blank, blank], "x": [1 + GAP, 2 + 2 * GAP]}
            self.outline.data = {"x": [], "y": []}
            self.figure.title.text = "image · source mask · target mask"
            return
        src, tgt = token_masks(A, source, target, self.prefix, p)
        self.overlay.data = {"image": [dimming(src), dimming(tgt)], "x": [1 + GAP, 2 + 2 * GAP]}
        xs, ys = [], []
        for panel, tok in ((1, source), (2, target)):
            if tok >= self.prefix:  # outline the token's own patch
                r, c = divmod(tok - self.prefix, p)
                xs.append(panel * (1 + GAP) + (c + 0.5) / p)
                ys.append(1 - (r + 0.5) / p)
        self.outline.data = {"x": xs, "y": ys}
        self.figure.title.text = (f"image · source mask of {token_name(source, self.prefix)} · "
                                  f"target mask of {token_name(target, self.prefix)}")
