"""The map of every head of every image on a head layout, as numbers: where one image's heads lie, where one
(layer, head) lies across images, and the contour lines of a density of points."""

from __future__ import annotations

import contourpy
import numpy as np
from scipy.ndimage import gaussian_filter

from vitscope.readout.palette import layer_colours
from vitscope.readout.store_data import StoreData

DENSITY_BINS = 96

HEAD_LEVELS = (0.2, 0.6)  # contour levels of one head's density (fraction of its peak)

ALL_LEVELS = (0.05, 0.15, 0.3, 0.5, 0.7, 0.9)


def contour_lines(x: np.ndarray, y: np.ndarray, bounds: tuple[float, float, float, float],
                  levels: tuple[float, ...], sigma: float = 1.5) -> dict[str, list]:
    """{xs, ys}: contour lines of the smoothed density of the points (levels as fractions of its peak)."""
    x0, y0, x1, y1 = bounds
    if len(x) < 3:
        return {"xs": [], "ys": []}
    h, _, _ = np.histogram2d(y, x, bins=DENSITY_BINS, range=[[y0, y1], [x0, x1]])  # [y, x]
    h = gaussian_filter(h, sigma)
    if h.max() <= 0:
        return {"xs": [], "ys": []}
    centre = (np.arange(DENSITY_BINS) + 0.5) / DENSITY_BINS
    gx, gy = x0 + centre * (x1 - x0), y0 + centre * (y1 - y0)
    gen = contourpy.contour_generator(gx, gy, h / h.max())
    xs, ys = [], []
    for level in levels:
        for line in gen.lines(level):
            xs.append(line[:, 0].tolist())
            ys.append(line[:, 1].tolist())
    return {"xs": xs, "ys": ys}


def image_heads(data: StoreData, kind: str, image: int | None) -> dict[str, list]:
    """The selected image's heads in a layout: x, y, layer, head, colour."""
    if image is None:
        return {"x": [], "y": [], "layer": [], "head": [], "colour": []}
    xy = getattr(data, f"head_xy_{kind}")[image].reshape(-1, 2)  # [L·H, 2]
    layer, head = np.divmod(np.arange(len(xy)), data.heads)
    return {"x": xy[:, 0], "y": xy[:, 1], "layer": layer, "head": head,
            "colour": np.array(layer_colours(data.layers))[layer]}


def head_instances(data: StoreData, kind: str, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y of one (layer, head) in every readable image of a layout."""
    xy = getattr(data, f"head_xy_{kind}")[:, layer, head]  # [N, 2]
    ok = data.valid & np.isfinite(xy).all(1)
    return xy[ok, 0], xy[ok, 1]
