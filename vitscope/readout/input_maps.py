"""The numbers under the app's input attributions: a patch map as the overlay draws it, its colour range, and the
rows of the faithfulness curves, their AUCs and the store-wide benchmark (`vitscope explain`'s answers).

Maps stay in their raw units (docs/architecture.md, "Input attributions and faithfulness"): only the colour range
follows each map, so a hover or a test reads the value the store or the model gave.
"""

from __future__ import annotations

import numpy as np

from vitscope.analysis.explain import FRACTIONS, most_faithful
from vitscope.vocab import EXPLAIN_DIRECTIONS, EXPLAIN_METHODS, STORED_MAPS

NONE = "none"
CHOICES = (NONE, *EXPLAIN_METHODS)  # what the map selector offers, in EXPLAIN_METHODS order
SIGNED = ("occlusion",)  # maps whose values can be negative (occluding a patch can raise P[target])
DIRECTION_NAMES = {"most_relevant_first": "most relevant first", "least_relevant_first": "least relevant first"}
BETTER = {"most_relevant_first": "low", "least_relevant_first": "high"}  # a faithful map's AUC, per direction


def overlay_values(patch_map: np.ndarray) -> np.ndarray:
    """[p, p] map (row 0 = the image's top row) → the [p, p] float32 array an image glyph draws (row 0 = bottom)."""
    return np.ascontiguousarray(np.asarray(patch_map, np.float32)[::-1])


def colour_range(method: str, patch_map: np.ndarray) -> tuple[float, float]:
    """The colour mapper's (low, high): 0 … max for the maps of attention (non-negative), ± the largest magnitude
    for occlusion (signed, so no change stays the middle colour); (0, 1) for a map without a finite value."""
    values = np.asarray(patch_map, np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    if method in SIGNED:
        m = max(float(np.abs(finite).max()), 1e-12)
        return -m, m
    low, high = min(float(finite.min()), 0.0), float(finite.max())
    return low, max(high, low + 1e-12)


def stored_or_none(maps: dict[str, np.ndarray] | None, method: str) -> np.ndarray | None:
    """The stored map of `method`, or None (occlusion, or a store without maps)."""
    return None if maps is None or method not in STORED_MAPS else maps[method]


def curve_rows(result: dict) -> dict[tuple[str, str], dict[str, list[float]]]:
    """{(method, direction): {"x": fractions removed, "y": P[target]}} of an explain answer."""
    return {(m, d): {"x": FRACTIONS.tolist(), "y": [float(v) for v in result["curves"][m][d]]}
            for m in result["curves"] for d in EXPLAIN_DIRECTIONS}


def auc_table(result: dict) -> list[tuple[str, dict[str, float], set[str]]]:
    """Per method of an explain answer: (method, {direction: AUC}, the directions in which it is the most faithful
    of the methods answered)."""
    auc = result["auc"]
    winners = most_faithful(auc)
    return [(m, {d: float(auc[m][d]) for d in EXPLAIN_DIRECTIONS}, {d for d, w in winners.items() if w == m})
            for m in EXPLAIN_METHODS if m in auc]


def benchmark_table(result: dict) -> list[tuple[str, dict[str, tuple[float, float, float]], set[str]]]:
    """Per method of an explain_set answer: (method, {direction: (mean AUC, low, high)}, the directions in which the
    benchmark names it the most faithful)."""
    mean, interval, most = result["mean_auc"], result["interval"], result["most_faithful"]
    return [(m, {d: (float(mean[m][d]), float(interval[m][d][0]), float(interval[m][d][1]))
                 for d in EXPLAIN_DIRECTIONS}, {d for d in EXPLAIN_DIRECTIONS if most.get(d) == m})
            for m in EXPLAIN_METHODS if m in mean]
