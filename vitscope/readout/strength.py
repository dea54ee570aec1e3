"""How far heads look, as numbers: every head's strength entropy and attention distance across layers, a head's
k-hop strength vector, and its entropy over all images (the paper's Attention Strength View, C1–C3)."""

from __future__ import annotations

import numpy as np

from vitscope.readout.palette import PIN_COLOURS, SELECTED
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import ENTROPY_BINS, StoreData
from vitscope.vocab import head_name

ENTROPY_LABEL = "strength entropy"

JITTER = 0.6  # width of a layer's column of heads, in layer units (< 1 so columns never touch)


def head_x(layers: int, heads: int) -> np.ndarray:
    """[L·H] x of each head in C1: its layer, spread evenly across a column so heads never overlap."""
    layer, head = np.divmod(np.arange(layers * heads), heads)
    return layer + (head - (heads - 1) / 2) * (JITTER / max(heads, 1))


def head_points(data: StoreData, image: int | None, cls: int | None = None) -> dict[str, np.ndarray]:
    """C1 columns: y = strength entropy and mean attention distance of every head (image, or mean over all
    images or one class)."""
    return {"y": data.image_or_mean("strength_entropy", image, cls).reshape(-1),
            "distance": data.image_or_mean("attention_distance", image, cls).reshape(-1)}


def compared(data: StoreData, sel: Selection) -> list[tuple[int, int, str]]:
    """(layer, head, colour) of the selected head followed by the pinned ones (duplicates dropped)."""
    out = [(sel.layer, sel.head, SELECTED)]
    for n, flat in enumerate(sel.pinned):
        layer, head = divmod(flat, data.heads)
        if (layer, head) != (sel.layer, sel.head) and layer < data.layers:
            out.append((layer, head, PIN_COLOURS[n % len(PIN_COLOURS)]))
    return out


def strength_bars(data: StoreData, heads: list[tuple[int, int, str]], image: int | None,
                  cls: int | None = None) -> dict[str, list]:
    """C2 columns: one bar per (head, hop), the heads side by side within each hop."""
    strength = data.image_or_mean("strength", image, cls)  # [L, H, hop]
    width = 0.8 / len(heads)
    cols: dict[str, list] = {"x": [], "top": [], "colour": [], "name": [], "width": []}
    for n, (layer, head, colour) in enumerate(heads):
        vals = strength[layer, head]
        cols["x"] += list(np.arange(len(vals)) - 0.4 + width * (n + 0.5))
        cols["top"] += [float(v) for v in vals]
        cols["colour"] += [colour] * len(vals)
        cols["name"] += [head_name(layer, head)] * len(vals)
        cols["width"] += [width] * len(vals)
    return cols


def entropy_steps(data: StoreData, heads: list[tuple[int, int, str]]) -> dict[str, list]:
    """C3 columns: each head's entropy distribution over readable images as a step outline (share of images)."""
    xs, ys, colours, names = [], [], [], []
    total = max(int(data.valid.sum()), 1)
    for layer, head, colour in heads:
        share = data.entropy_histogram(layer, head) / total
        xs.append(list(np.repeat(ENTROPY_BINS, 2)))
        ys.append([0.0, *np.repeat(share, 2), 0.0])
        colours.append(colour)
        names.append(head_name(layer, head))
    return {"xs": xs, "ys": ys, "colour": colours, "name": names}
