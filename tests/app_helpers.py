"""Shared by the app tests: a small synthetic store with unreadable images, and fake attention functions."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import zarr

from vitscope import store

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import synthetic_store  # noqa: E402


def make_store(path: Path, images: int, layers: int, heads: int, grid: int, classes: int,
               unreadable: tuple[int, ...] = ()) -> Path:
    """A synthetic store in the real schema; the `unreadable` images hold what a build writes for an image it
    could not read (every per-image variable at its fill value: NaN, -1, False, 0; valid False)."""
    out = synthetic_store.make(Path(path), images=images, layers=layers, heads=heads, grid=grid, classes=classes,
                               chunk=8)
    for name in (*store.PER_CHUNK, *store.GLOBAL):
        if (out / name).exists():
            arr = zarr.open_array(str(out / name), mode="r+")
            if arr.attrs["_ARRAY_DIMENSIONS"][0] != "image":  # per head (head_kind, …): no image's to clear
                continue
            for i in unreadable:
                arr[i] = store.fill_value(arr.dtype)
    return out


def drop_effects(path: Path) -> Path:
    """The store as a vitscope before schema v5 wrote it: no head effects (`vocab.HEAD_EFFECTS`)."""
    import shutil

    from vitscope.vocab import HEAD_EFFECTS

    for name in HEAD_EFFECTS:
        shutil.rmtree(Path(path) / name)
    zarr.consolidate_metadata(str(path))
    return Path(path)


def fake_attention(layers: int, heads: int, tokens: int):
    """A deterministic attention function: peaky row-stochastic [L, H, P, P] per image, [H, P, P] of one layer."""

    def attention(image: int, layer: int | None = None) -> np.ndarray:
        a = np.random.default_rng(image).random((layers, heads, tokens, tokens)) ** 6
        a = (a / a.sum(-1, keepdims=True)).astype(np.float32)
        return a if layer is None else a[layer]

    return attention


class CountingAttention:
    """Wraps an attention function and counts its calls per (image, layer)."""

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, Counter()

    def __call__(self, image: int, layer: int) -> np.ndarray:
        self.calls[image, layer] += 1
        return self.fn(image, layer)


def rgba_bytes(image: np.ndarray) -> np.ndarray:
    """Bokeh's image_rgba array [h, w] uint32 (row 0 = bottom) → [h, w, 4] uint8 (row 0 = top)."""
    out = np.zeros((*image.shape, 4), np.uint8)
    for r in range(image.shape[0]):
        for c in range(image.shape[1]):
            v = int(image[r, c])
            out[image.shape[0] - 1 - r, c] = [v & 255, (v >> 8) & 255, (v >> 16) & 255, v >> 24]
    return out


def fake_served_page(monkeypatch) -> tuple[list, list]:
    """Make Panel look like a served page to `poll_layouts`: returns (made, loaded), the periodic callbacks asked
    for, as (callback, handle with `.stopped`), and the page's onload callbacks, for the test to call."""
    import panel as pn

    class Session:  # what pn.state.curdoc is in a served page
        session_context = object()

    class Periodic:
        stopped = False

        def stop(self) -> None:
            self.stopped = True

    made: list = []
    loaded: list = []

    def add_periodic_callback(callback, period):
        made.append((callback, Periodic()))
        return made[-1][1]

    monkeypatch.setattr(type(pn.state), "curdoc", property(lambda self: Session()))
    monkeypatch.setattr(pn.state, "onload", loaded.append)
    monkeypatch.setattr(pn.state, "add_periodic_callback", add_periodic_callback)
    return made, loaded


def fake_explanation(image: int, target: int, grid: int, seed: int = 0) -> dict:
    """`Service.explain`'s dict without a model: random maps (occlusion signed, as a drop of P can be negative),
    falling curves and their AUCs by the trapezoid rule, so the figures can be checked against known numbers."""
    from vitscope.vocab import EXPLAIN_DIRECTIONS, EXPLAIN_METHODS

    rng = np.random.default_rng(seed)
    n = grid * grid
    maps = {m: (rng.random(n) - (0.5 if m == "occlusion" else 0.0)).tolist() for m in EXPLAIN_METHODS}
    curves = {m: {d: np.sort(rng.random(10))[::-1].tolist() for d in EXPLAIN_DIRECTIONS} for m in EXPLAIN_METHODS}
    fractions = np.arange(10) / 10
    auc = {m: {d: float(np.trapezoid(c, fractions)) for d, c in cs.items()} for m, cs in curves.items()}
    return {"image": image, "target": target, "grid": [grid, grid], "maps": maps, "curves": curves, "auc": auc}
