"""Attention Pattern View: picking, layouts, lines, threshold, masks, errors and rendering, without a browser."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from vitscope.app.data import StoreData
from vitscope.app.pattern_view import CLS_COLOUR, PATCH_COLOUR, AttentionPatternView
from vitscope.app.state import Selection
from vitscope.errors import VitscopeError

N, L, H, GRID = 12, 2, 3, 4
P = 1 + GRID * GRID


def _synthetic():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic_store.py"
    spec = importlib.util.spec_from_file_location("synthetic_store", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("synthetic_store", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> StoreData:
    out = tmp_path_factory.mktemp("pv") / "s.zarr"
    _synthetic().make(out, images=N, layers=L, heads=H, grid=GRID, classes=3, chunk=5)
    return StoreData(out)


def fake_attention(image: int) -> np.ndarray:
    """Deterministic peaky row-stochastic attention [L, H, P, P] per image."""
    rng = np.random.default_rng(image)
    a = rng.random((L, H, P, P)).astype(np.float32) ** 6
    return a / a.sum(-1, keepdims=True)


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: int) -> np.ndarray:
        self.calls += 1
        return fake_attention(image)


def view(data: StoreData, fn=fake_attention, **sel) -> tuple[AttentionPatternView, Selection]:
    s = Selection(**sel)
    return AttentionPatternView(data, s, fn), s


def test_pick_selects_kdtree_nearest_head(data):
    v, s = view(data)
    xy = data.head_xy_cls  # [N, L, H, 2]
    rng = np.random.default_rng(1)
    for x, y in rng.normal(size=(10, 2)):
        got = v.pick(x, y)
        brute = np.unravel_index(np.argmin(((xy - [x, y]) ** 2).sum(-1)), xy.shape[:3])
        assert got == tuple(int(b) for b in brute)
        assert (s.image, s.layer, s.head) == got
    s.layout = "patch"
    x, y = data.head_xy_patch[3, 1, 2]
    assert v.pick(x, y) == (3, 1, 2)


def test_switching_layout_changes_points(data):
    v, s = view(data)
    cls = v.overview_points()
    assert len(cls) == N * L * H
    np.testing.assert_allclose(cls[["x", "y"]].to_numpy(), data.head_xy_cls.reshape(-1, 2))
    s.layout = "patch"
    patch = v.overview_points()
    np.testing.assert_allclose(patch[["x", "y"]].to_numpy(), data.head_xy_patch.reshape(-1, 2))
    assert not np.allclose(cls[["x", "y"]].to_numpy(), patch[["x", "y"]].to_numpy())
    row = patch.iloc[7]
    assert (row["image"], row["layer"], row["head"]) == (1, 0, 1)  # 7 = 1·L·H + 0·H + 1
    s.image = 2
    sel = v.selected_points()
    assert len(sel) == L * H
    np.testing.assert_allclose(sel[["x", "y"]].to_numpy(), data.head_xy_patch[2].reshape(-1, 2))


def test_lines_are_entries_above_threshold_with_colours(data):
    v, s = view(data, image=4, layer=1, head=2)
    A = fake_attention(4)[1, 2]
    thr = float(np.quantile(A, 0.9))
    df = v.lines(thr)
    want = {(int(i), int(j)) for i, j in zip(*np.nonzero(A > thr), strict=True)}
    got = set(zip(df["source"].astype(int), df["target"].astype(int), strict=True))
    assert got == want and len(df) == len(want)
    np.testing.assert_allclose(df["value"], A[df["source"], df["target"]])
    assert (df["y0"] == 1).all() and (df["y1"] == 0).all()
    assert (df["x0"] == df["source"]).all() and (df["x1"] == df["target"]).all()
    cls = (df["source"] == 0) | (df["target"] == 0)
    assert (df.loc[cls, "colour"] == CLS_COLOUR).all()
    assert (df.loc[~cls, "colour"] == PATCH_COLOUR).all()
    assert cls.any() and (~cls).any()
    s.threshold = thr
    assert len(v.lines()) == len(want)


def test_default_threshold_keeps_top_one_percent(data):
    v, s = view(data, image=1, layer=0, head=1)
    A = fake_attention(1)[0, 1]
    thr = v.default_threshold()
    kept = int((A > thr).sum())
    assert kept == max(1, round(0.01 * A.size))
    assert s.threshold is None and v.threshold() == thr
    big = np.random.default_rng(0).random((197, 197))
    assert abs((big > v.default_threshold(big)).mean() - 0.01) < 1e-3


def test_masks_are_rows_and_columns_on_the_grid(data):
    v, _ = view(data, image=6, layer=0, head=0)
    A = fake_attention(6)[0, 0]
    for token in (0, 1, P - 1):
        src, tgt = v.masks(token)
        assert src.shape == tgt.shape == (GRID, GRID)
        np.testing.assert_array_equal(src.ravel(), A[token, 1:])
        np.testing.assert_array_equal(tgt.ravel(), A[1:, token])
    src, tgt = v.masks(3, 5)
    np.testing.assert_array_equal(tgt.ravel(), A[1:, 5])


def test_attention_cached_per_image(data):
    fn = Counter()
    v, s = view(data, fn, image=0)
    v.lines(), v.masks(0), v.default_threshold()
    s.param.update(layer=1, head=2)
    v.lines()
    assert fn.calls == 1
    s.image = 1
    v.lines()
    assert fn.calls == 2


def test_heatmap_enlarges_prefix_and_maps_taps(data):
    v, _ = view(data, image=0)
    rgb = v.heatmap_rgb()
    m = int(v.heatmap_edges()[-1])
    assert rgb.shape == (m, m, 3) and m > P
    assert v.token_at(0.5) == 0 and v.token_at(m - 0.5) == P - 1
    v._on_tap_heatmap(m - 0.5, 0.5)  # bottom-right cell: last source → last target
    assert (v.source_token, v.target_token) == (P - 1, P - 1)


def test_raising_attention_sets_message(data):
    def broken(image: int) -> np.ndarray:
        raise VitscopeError(f"image {image} could not be read at build")

    v, s = view(data, broken, image=3)
    assert v.attention_matrix() is None
    assert "could not be read" in s.message and "could not be read" in v.error
    assert len(v.lines(0.0)) == 0 and v.masks(0) is None
    pn_root(v)  # renders the message instead of raising


def test_wrong_shape_sets_message(data):
    v, s = view(data, lambda i: np.zeros((1, 1, 3, 3)), image=0)
    assert v.attention_matrix() is None and "shape" in s.message


def test_out_of_range_selection_does_not_raise(data):
    v, s = view(data, image=N + 5)
    assert v.attention_matrix() is None and "not in this store" in v.info()
    s.param.update(image=0, layer=L + 1)
    assert v.attention_matrix() is None and "not in this model" in v.info()
    pn_root(v)


def pn_root(v: AttentionPatternView):
    import panel as pn
    from bokeh.model import Model

    root = pn.panel(v).get_root()
    assert isinstance(root, Model)
    return root


def test_renders_to_bokeh(data):
    v, s = view(data)
    pn_root(v)  # no image: hint
    s.param.update(image=2, layer=1, head=0)
    assert "image" in v.info() and "pattern" in v.info()
    s.density = True
    s.layout = "patch"
    pn_root(v)
    v._on_tap_histogram(0.05)
    assert s.threshold == pytest.approx(0.05)
    v._on_hover_axes(3.2, 0.2)
    assert v.target_token == 3
    pn_root(v)


def test_streams_drive_the_selection(data):
    """The HoloViews streams the browser fires (tap, pointer) reach the selection and the view's tokens."""
    v, s = view(data)
    pn_root(v)
    x, y = data.head_xy_cls[5, 0, 2]
    v.overview_tap.event(x=float(x), y=float(y))
    assert (s.image, s.layer, s.head) == (5, 0, 2)
    v.axes_pointer.event(x=4.1, y=0.9)
    assert v.source_token == 4
    v.histogram_tap.event(x=0.2, y=0.0)
    assert s.threshold == pytest.approx(0.2) and v._slider.value == pytest.approx(min(0.2, v._slider.end))
    v._slider.value = 0.01
    assert s.threshold == pytest.approx(0.01)


def test_masks_picture_tints_the_image_where_the_token_attends(data):
    v, _ = view(data, image=6, layer=0, head=0)
    A = fake_attention(6)[0, 0]
    rgb = v.masks_rgb(0, 2).astype(float)
    size = data.thumbnail(6).shape[0]
    cell, gap = size // GRID, max(size // 16, 1)
    assert rgb.shape == (size, 3 * size + 2 * gap, 3)
    base = rgb[:, :size]
    for panel, mask in ((rgb[:, size + gap: 2 * size + gap], A[0, 1:]), (rgb[:, 2 * size + 2 * gap:], A[1:, 2])):
        per_patch = np.abs(panel - base).sum(-1)[: cell * GRID, : cell * GRID].reshape(GRID, cell, GRID, cell)
        assert np.corrcoef(per_patch.mean((1, 3)).ravel(), mask)[0, 1] > 0.8
    np.testing.assert_array_equal(rgb[0, 2 * size + 2 * gap + cell], [214, 39, 40])  # patch 1's outline, red
