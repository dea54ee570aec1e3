"""One head's attention matrix A [P, P] on one image, as the views draw it: the source and target masks of two
tokens, the threshold at the store's binarisation cut, the two-axes segments above a threshold, the heatmap's
pixels and the histogram of values. Pure functions of (A, threshold, number of prefix tokens)."""

from __future__ import annotations

import numpy as np

from vitscope.analysis.binary import top_count
from vitscope.readout.palette import CLS, PATCH, rgb


def token_masks(A: np.ndarray, source: int, target: int, prefix: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Source mask A[source, patches] and target mask A[patches, target], each [grid, grid]."""
    return A[source, prefix:].reshape(grid, grid), A[prefix:, target].reshape(grid, grid)


def token_name(token: int, prefix: int) -> str:
    return "CLS" if token < prefix else f"patch {token - prefix}"

MAX_LINES = 20_000  # a browser draws this many segments smoothly; above it only the strongest are drawn

PREFIX_CELLS = 10  # heatmap cells a prefix row/column spans (the paper: 10 pixels instead of 1)

HIST_BINS = 60

LINE_COLUMNS = ("x0", "y0", "x1", "y1", "source", "target", "value", "colour", "alpha")


def top_threshold(A: np.ndarray | None, fraction: float, prefix: int) -> float:
    """The value above which lie exactly the k = ceil(fraction·N²) largest patch→patch values (ties aside): the
    build's binarisation (`analysis.binary.binarise`, the same k), so the default view shows the map the pattern
    labels saw."""
    if A is None:
        return 0.0
    flat = A[prefix:, prefix:].ravel()
    k = top_count(fraction, A.shape[-1] - prefix)
    if k >= flat.size:
        return float(flat.min()) - 1e-12
    return float(np.partition(flat, flat.size - k - 1)[flat.size - k - 1])  # (k+1)-th largest


def lines(A: np.ndarray | None, threshold: float, prefix: int) -> dict[str, np.ndarray]:
    """Two-axes segments for every A[s, t] > threshold: source s at (s, 1), target t at (t, 0); blue when s
    or t is a prefix token, else orange; alpha light → dark with the value; weakest first so strong lines
    are drawn on top; at most MAX_LINES (the strongest)."""
    if A is None:  # colours as an empty string array: BokehJS rejects a float one ("invalid color array")
        return {c: np.empty(0, "U7" if c == "colour" else float) for c in LINE_COLUMNS}
    src, tgt = np.nonzero(A > threshold)
    val = A[src, tgt]
    order = np.argsort(val, kind="stable")[-MAX_LINES:]
    src, tgt, val = src[order], tgt[order], val[order]
    cls = (src < prefix) | (tgt < prefix)
    top = float(val.max()) if val.size else 1.0
    return {"x0": src.astype(float), "y0": np.ones(len(src)), "x1": tgt.astype(float), "y1": np.zeros(len(src)),
            "source": src, "target": tgt, "value": val, "colour": np.where(cls, CLS, PATCH),
            "alpha": 0.15 + 0.85 * np.clip(val / max(top, 1e-12), 0, 1)}


def heatmap_edges(prefix: int, tokens: int) -> np.ndarray:
    """[P+1] cell edges of the heatmap: each prefix token spans PREFIX_CELLS cells, each patch one."""
    return np.r_[0, np.cumsum(np.r_[np.full(prefix, PREFIX_CELLS), np.ones(tokens - prefix, int)])]


def heatmap_rgb(A: np.ndarray, threshold: float, prefix: int) -> np.ndarray:
    """[M, M, 3] uint8 (row 0 = source token 0): blue for CLS-related cells, orange for patch→patch, darker =
    stronger; cells at or below the threshold fade to a fifth (the threshold "also applies to this heatmap")."""
    t = np.sqrt(np.clip(A / max(float(A.max()), 1e-12), 0, 1))  # [P, P] perceptual boost of small values
    t = np.where(A > threshold, t, 0.2 * t)
    base = np.empty((*A.shape, 3))
    base[...] = rgb(PATCH)
    base[:prefix, :] = rgb(CLS)
    base[:, :prefix] = rgb(CLS)
    out = 1.0 - t[..., None] * (1.0 - base)  # white → full colour
    reps = np.diff(heatmap_edges(prefix, len(A)))
    out = np.repeat(np.repeat(out, reps, axis=0), reps, axis=1)  # [M, M, 3]
    return (out * 255).round().astype(np.uint8)


def token_at(edges: np.ndarray, x: float) -> int:
    """Heatmap coordinate (0 at the left/top edge) → token index."""
    return int(np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2))


def histogram(A: np.ndarray | None) -> dict[str, np.ndarray]:
    """Quads of the histogram of A's values, log10(count + 1) high."""
    values = np.zeros(1) if A is None else A.ravel()
    counts, edges = np.histogram(values, bins=HIST_BINS, range=(0.0, max(float(values.max()), 1e-6)))
    return {"left": edges[:-1], "right": edges[1:], "top": np.log10(counts + 1.0)}
