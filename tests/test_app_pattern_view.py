"""Attention Pattern View: the map (pick, raster, zoom, layouts, contours), the matrix plots (lines, threshold,
heatmap, histogram, hover protocol), the masks, and attention errors, without a browser.

Each check compares the data behind the plots (ColumnDataSources after `update`) with a slow reference
computed here with plain loops.
"""

from __future__ import annotations

import math

import numpy as np
import panel as pn
import pytest
import torch
from app_helpers import CountingAttention, fake_attention, make_store, rgba_bytes
from bokeh.core.serialization import Serializer
from bokeh.document import Document
from bokeh.events import RangesUpdate, Tap
from bokeh.model import Model
from bokeh.models import ColumnDataSource

from vitscope.analysis.binary import binarise
from vitscope.app.masks import DIM, GAP, MaskPlot, dimming
from vitscope.app.pattern_map import aggregate
from vitscope.app.pattern_matrix import MatrixPlots
from vitscope.app.pattern_view import AttentionPatternView
from vitscope.errors import VitscopeError
from vitscope.readout.attention import (
    HIST_BINS,
    MAX_LINES,
    PREFIX_CELLS,
    heatmap_edges,
    heatmap_rgb,
    histogram,
    lines,
    token_at,
)
from vitscope.readout.palette import CLS, PATCH, layer_colours, rgb
from vitscope.readout.pattern_map import head_instances
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.vocab import BASE_PATTERNS, HEAD_KINDS, OFFSETS, PATTERNS

N, L, H, GRID = 12, 2, 3, 4
P = 1 + GRID * GRID  # one prefix token (CLS)
UNREADABLE = (10,)
READABLE = [i for i in range(N) if i not in UNREADABLE]
attention = fake_attention(L, H, P)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> StoreData:
    return StoreData(make_store(tmp_path_factory.mktemp("pattern") / "s.zarr", N, L, H, GRID, 3, UNREADABLE))


def view_of(data: StoreData, fn=attention, **selection) -> tuple[AttentionPatternView, Selection]:
    sel = Selection(**selection)
    thumbs = ColumnDataSource({"image": [np.zeros(data.thumb_shape[:2], np.uint32)]})
    return AttentionPatternView(data, sel, fn, thumbs), sel


def head_points(data: StoreData, kind: str) -> list[tuple[float, float, int, int, int]]:
    """(x, y, image, layer, head) of every head of every readable image in a layout."""
    xy = getattr(data, f"head_xy_{kind}")
    return [(float(xy[i, la, h, 0]), float(xy[i, la, h, 1]), i, la, h)
            for i in READABLE for la in range(L) for h in range(H)]


def bounds_of(data: StoreData, kind: str) -> tuple[float, float, float, float]:
    pts = head_points(data, kind)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    px, py = 0.05 * (max(xs) - min(xs)), 0.05 * (max(ys) - min(ys))
    return min(xs) - px, min(ys) - py, max(xs) + px, max(ys) + py


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "Traceback" not in message


def trigger(fig, event) -> None:
    fig._trigger_event(event)


# -- the map ----------------------------------------------------------------------------------------------


def test_tap_picks_the_nearest_head_in_both_layouts(data):
    view, sel = view_of(data)
    rng = np.random.default_rng(1)
    for kind in ("cls", "patch"):
        sel.layout = kind
        view.update({"layout"})
        pts = head_points(data, kind)
        for x, y in rng.normal(size=(12, 2)):
            best = min(pts, key=lambda p: (p[0] - x) ** 2 + (p[1] - y) ** 2)
            assert view.map.pick(x, y) == best[2:] == (sel.image, sel.layer, sel.head)
        x, y, *want = pts[17]
        trigger(view.map.figure, Tap(view.map.figure, x=x, y=y))  # a click in the browser
        assert (sel.image, sel.layer, sel.head) == tuple(want)
    assert view.map.pick(None, 1.0) is None


def test_instances_are_the_head_in_every_readable_image(data):
    view, sel = view_of(data, image=3)
    for layer, head in ((0, 0), (1, 2), (0, 1)):
        sel.param.update(layer=layer, head=head)
        view.update({"layer", "head"})
        want = [(p[0], p[1]) for p in head_points(data, "cls") if p[3:] == (layer, head)]
        assert len(want) == len(READABLE)
        x, y = head_instances(data, "cls", layer, head)
        assert list(zip(x.tolist(), y.tolist(), strict=True)) == want
        src = view.map.instances.data
        assert list(zip(list(src["x"]), list(src["y"]), strict=True)) == want
        assert view.map.ring.data == {"x": [float(data.head_xy_cls[3, layer, head, 0])],
                                      "y": [float(data.head_xy_cls[3, layer, head, 1])]}
    heads = view.map.heads.data  # the selected image's heads, coloured by layer
    assert list(zip(heads["x"], heads["y"], strict=True)) == [(p[0], p[1]) for p in head_points(data, "cls")
                                                               if p[2] == 3]
    assert list(heads["colour"]) == [layer_colours(L)[k // H] for k in range(L * H)]


def check_raster(data: StoreData, raster: dict, kind: str, x_range, y_range, size: int) -> None:
    """Every head inside the ranges lights its pixel in its layer's colour; nothing lights far from a head."""
    img = raster["image"][0]
    assert img.shape == (size, size)
    (x0, x1), (y0, y1) = x_range, y_range
    assert (raster["x"][0], raster["y"][0], raster["dw"][0], raster["dh"][0]) == pytest.approx(
        (x0, y0, x1 - x0, y1 - y0))
    alpha = img >> 24  # row 0 = bottom
    pixels = []
    for x, y, _, layer, _ in head_points(data, kind):
        if x0 <= x <= x1 and y0 <= y <= y1:
            pixels.append((min(int((y - y0) / (y1 - y0) * size), size - 1),
                           min(int((x - x0) / (x1 - x0) * size), size - 1), layer))
    assert pixels
    coloured = set()  # the layers whose colour was checked on a pixel of theirs alone
    for r, c, layer in pixels:
        assert alpha[r, c] > 0
        alone = all(max(abs(r - r2), abs(c - c2)) > 4 for r2, c2, la in pixels if la != layer)
        if alone:  # a pixel of one layer only has that layer's colour
            v = int(img[r, c])
            got = np.array([v & 255, (v >> 8) & 255, (v >> 16) & 255])
            assert np.abs(got - np.round(rgb(layer_colours(L)[layer]) * 255)).max() <= 1
            coloured.add(layer)
    assert coloured == {layer for _, _, layer in pixels}, coloured  # each layer shown had a pixel to itself
    lit = np.argwhere(alpha > 0)
    heads = np.array([(r, c) for r, c, _ in pixels])
    far = np.abs(lit[:, None, :] - heads[None, :, :]).max(-1).min(1)  # Chebyshev distance to the nearest head
    assert far.max() <= 4  # dynspread grows lone points by a few pixels, no more


def test_raster_is_every_head_at_full_extent_and_reaggregates_on_zoom(data):
    view, sel = view_of(data)
    m = view.map
    x0, y0, x1, y1 = bounds_of(data, "cls")
    assert data.bounds("cls") == pytest.approx((x0, y0, x1, y1))
    assert ((aggregate(data, "cls", (x0, x1), (y0, y1), 100, 100) >> 24) > 0).sum() > 0
    full = m.raster.data["image"][0]
    check_raster(data, m.raster.data, "cls", (x0, x1), (y0, y1), m.size)
    xs = sorted(p[0] for p in head_points(data, "cls"))
    ys = sorted(p[1] for p in head_points(data, "cls"))
    zoom = (xs[len(xs) // 4], xs[3 * len(xs) // 4]), (ys[len(ys) // 4], ys[3 * len(ys) // 4])
    trigger(m.figure, RangesUpdate(m.figure, x0=zoom[0][0], x1=zoom[0][1], y0=zoom[1][0], y1=zoom[1][1]))
    zoomed = m.raster.data["image"][0]
    assert zoomed.shape == full.shape and not np.array_equal(zoomed, full)
    check_raster(data, m.raster.data, "cls", *zoom, m.size)
    m.reaggregate((1.0, 1.0), (0.0, 1.0))  # an empty range is ignored
    m.reaggregate((None, 1.0), (0.0, 1.0))
    assert m.raster.data["image"][0] is zoomed


def test_switching_layout_moves_the_ranges_and_the_points(data):
    view, sel = view_of(data, image=4, layer=1, head=1)
    for kind in ("patch", "cls"):
        sel.layout = kind
        view.update({"layout"})
        x0, y0, x1, y1 = bounds_of(data, kind)
        fig = view.map.figure
        assert (fig.x_range.start, fig.x_range.end, fig.y_range.start, fig.y_range.end) == pytest.approx(
            (x0, x1, y0, y1))
        check_raster(data, view.map.raster.data, kind, (x0, x1), (y0, y1), view.map.size)
        heads = view.map.heads.data
        want = [(p[0], p[1]) for p in head_points(data, kind) if p[2] == 4]
        assert list(zip(heads["x"], heads["y"], strict=True)) == want
        inst = view.map.instances.data
        assert list(zip(list(inst["x"]), list(inst["y"]), strict=True)) == [
            (p[0], p[1]) for p in head_points(data, kind) if p[3:] == (1, 1)]
        assert f"{kind} layout" in fig.title.text


def test_contours_lie_within_the_layout(data):
    view, sel = view_of(data)
    some = 0
    for kind in ("cls", "patch"):
        sel.layout = kind
        x0, y0, x1, y1 = bounds_of(data, kind)
        ex, ey = 1e-6 * (x1 - x0), 1e-6 * (y1 - y0)  # the layouts are float32
        for layer, head in ((0, 0), (1, 2)):
            sel.param.update(layer=layer, head=head)
            view.update({"layout", "layer", "head"})
            c = view.map.head_contours.data
            some += len(c["xs"])
            for xs, ys in zip(c["xs"], c["ys"], strict=True):
                assert len(xs) == len(ys) >= 2
                assert all(x0 - ex <= x <= x1 + ex for x in xs) and all(y0 - ey <= y <= y1 + ey for y in ys)
        assert view.map.all_contours.data["xs"] == []
        sel.density = True
        view.update({"density"})
        c = view.map.all_contours.data
        assert c["xs"] and all(x0 - ex <= x <= x1 + ex for xs in c["xs"] for x in xs)
        assert all(y0 - ey <= y <= y1 + ey for ys in c["ys"] for y in ys)
        sel.density = False
        view.update({"density"})
        assert view.map.all_contours.data["xs"] == []
    assert some > 0


# -- the matrix plots -------------------------------------------------------------------------------------


def lines_reference(A: np.ndarray, threshold: float, prefix: int) -> list[tuple]:
    """(source, target, value, colour) of every value above the threshold, weakest first."""
    out = [(s, t, float(A[s, t]), CLS if s < prefix or t < prefix else PATCH)
           for s in range(len(A)) for t in range(len(A)) if A[s, t] > threshold]
    return sorted(out, key=lambda r: r[2])


def check_lines(seg: dict, A: np.ndarray, threshold: float, prefix: int = 1) -> None:
    want = lines_reference(A, threshold, prefix)
    got = list(zip(list(seg["source"]), list(seg["target"]), list(seg["value"]), list(seg["colour"]), strict=True))
    assert [(int(s), int(t), float(v), c) for s, t, v, c in got] == want
    assert list(seg["x0"]) == [float(s) for s, *_ in want] and list(seg["x1"]) == [float(t) for _, t, *_ in want]
    assert set(seg["y0"]) <= {1.0} and set(seg["y1"]) <= {0.0}  # source on top, target below
    top = max((v for _, _, v, _ in want), default=1.0)
    np.testing.assert_allclose(seg["alpha"], [0.15 + 0.85 * v / top for _, _, v, _ in want], rtol=1e-6)


def test_lines_are_the_values_above_the_threshold_with_colours(data):
    A = attention(4)[1, 2]
    thr = float(np.quantile(A, 0.9))
    seg = lines(A, thr, 1)
    check_lines(seg, A, thr)
    cls = [s == 0 or t == 0 for s, t in zip(seg["source"], seg["target"], strict=True)]
    assert any(cls) and not all(cls)  # both colours occur
    assert all(len(v) == 0 for v in lines(None, 0.0, 1).values())
    # BokehJS reads a colour column sent as a numeric array as RGBA bytes and throws on a float one: the blank
    # view's colours go as strings (Bokeh sends a string array as dtype "object"), like the drawn view's.
    for seg in (lines(None, 0.0, 1), lines(A, thr, 1)):
        assert Serializer().encode(seg["colour"])["dtype"] == "object"
    view, sel = view_of(data, image=4, layer=1, head=2, threshold=thr)
    check_lines(view.matrix.segments.data, A, thr)
    assert str(len(lines_reference(A, thr, 1))) in view.matrix.axes.title.text  # the count of lines drawn
    sel.threshold = 0.2
    view.update({"threshold"})
    check_lines(view.matrix.segments.data, A, 0.2)
    assert view.matrix.threshold_line.location == 0.2


def test_lines_keep_the_strongest_max_lines(data):
    A = np.random.default_rng(3).random((160, 160))
    assert A.size > MAX_LINES
    seg = lines(A, -1.0, 2)
    assert len(seg["value"]) == MAX_LINES
    kept = {(int(s), int(t)) for s, t in zip(seg["source"], seg["target"], strict=True)}
    dropped = [A[s, t] for s in range(160) for t in range(160) if (s, t) not in kept]
    assert len(dropped) == A.size - MAX_LINES and min(seg["value"]) >= max(dropped)
    assert all(np.diff(seg["value"]) >= 0) and seg["alpha"][-1] == pytest.approx(1.0)


def test_default_threshold_keeps_the_stores_top_fraction(data):
    view, sel = view_of(data, image=1, layer=0, head=1)
    A = attention(1)[0, 1]
    thr = view.threshold()
    patches = [A[s, t] for s in range(1, P) for t in range(1, P)]  # the block the build binarises
    assert sum(1 for v in patches if v > thr) == max(1, math.ceil(data.top * len(patches)))
    assert sel.threshold is None and view.matrix.threshold_line.location == thr
    check_lines(view.matrix.segments.data, A, thr)
    big = np.random.default_rng(0).random((197, 197))
    t = view.threshold(big)
    assert sum(1 for v in big[1:, 1:].ravel() if v > t) == math.ceil(data.top * 196 * 196)
    # the same cut as the build's binarisation of this block
    want = binarise(torch.from_numpy(big[1:, 1:]), data.top).numpy()
    assert np.array_equal(big[1:, 1:] > t, want)


def test_heatmap_enlarges_the_prefix_and_taps_map_to_tokens(data):
    edges = heatmap_edges(1, P)
    want, x = [0], 0
    for token in range(P):
        x += PREFIX_CELLS if token < 1 else 1
        want.append(x)
    assert list(edges) == want
    m = want[-1]
    for token in range(P):  # every cell's inside maps back to its token
        for frac in (0.01, 0.5, 0.99):
            assert token_at(edges, want[token] + frac * (want[token + 1] - want[token])) == token
    assert token_at(edges, -3) == 0 and token_at(edges, m + 3) == P - 1
    view, sel = view_of(data, image=0, layer=1, head=0)
    A = attention(0)[1, 0]
    thr = view.threshold()
    pixels = rgba_bytes(view.matrix.heat_source.data["image"][0])  # row 0 = top = source token 0
    assert pixels.shape == (m, m, 4)
    for s, t in ((0, 0), (0, 5), (3, 0), (7, 9), (P - 1, P - 1)):
        v = math.sqrt(min(max(float(A[s, t]) / float(A.max()), 0.0), 1.0)) * (1 if A[s, t] > thr else 0.2)
        base = rgb(CLS if s == 0 or t == 0 else PATCH)
        colour = [round((1 - v * (1 - b)) * 255) for b in base]
        block = pixels[want[s]:want[s + 1], want[t]:want[t + 1], :3]
        assert (np.abs(block.astype(int) - colour) <= 1).all(), (s, t)
    assert np.array_equal(heatmap_rgb(A, thr, 1), pixels[..., :3])
    heat = view.matrix.heatmap
    for x, y, source, target in ((m - 0.5, 0.5, P - 1, P - 1), (0.5, m - 0.5, 0, 0), (10.5, m - 11.5, 2, 1)):
        trigger(heat, Tap(heat, x=x, y=y))  # y grows upwards, rows (sources) downwards
        assert (sel.source_token, sel.target_token) == (source, target)


def test_histogram_counts_and_tap_sets_the_threshold(data):
    A = attention(2)[0, 2]
    h = histogram(A)
    top = float(A.max())
    counts = [0] * HIST_BINS
    for v in A.ravel():
        counts[min(int(float(v) / top * HIST_BINS), HIST_BINS - 1)] += 1
    np.testing.assert_allclose(h["top"], [math.log10(c + 1) for c in counts], rtol=1e-6)
    assert h["left"][0] == 0 and h["right"][-1] == pytest.approx(top)
    view, sel = view_of(data, image=2, layer=0, head=2)
    np.testing.assert_allclose(view.matrix.hist_source.data["top"], h["top"])
    hist = view.matrix.hist
    trigger(hist, Tap(hist, x=0.05, y=0.3))
    assert sel.threshold == pytest.approx(0.05)
    trigger(hist, Tap(hist, x=-0.2, y=0.3))
    assert sel.threshold == 0.0


def test_hover_token_protocol_reaches_the_selection_and_the_masks(data):
    view, sel = view_of(data, image=5, layer=1, head=1)
    hl = view.matrix.highlight
    hl.tags = [4, 1]  # what HOVER_JS writes when a source token is hovered
    assert sel.source_token == 4
    hl.tags = [9, 0]  # a target token
    assert (sel.source_token, sel.target_token) == (4, 9)
    Document().add_root(view.matrix.axes)  # within a document (a served session) the change arrives the same way
    hl.tags = [7, 1]
    assert sel.source_token == 7
    hl.tags = []  # what `show` resets: no token
    assert (sel.source_token, sel.target_token) == (7, 9)
    view.update({"source_token", "target_token"})
    centres = list(zip(view.masks.outline.data["x"], view.masks.outline.data["y"], strict=True))
    for panel, (token, (x, y)) in enumerate(zip((7, 9), centres, strict=True), start=1):
        r, c = divmod(token - 1, GRID)
        left = panel * (1 + GAP)
        assert left + c / GRID < x < left + (c + 1) / GRID and 1 - (r + 1) / GRID < y < 1 - r / GRID
    calls = []
    plots = MatrixPlots(1, P, on_token=lambda t, s: calls.append((t, s)))
    plots.show(attention(0)[0, 0], 0.1)
    plots.highlight.tags = [3, 0]
    assert calls == [(3, False)]


# -- the masks --------------------------------------------------------------------------------------------


def test_masks_dim_unattended_patches_and_outline_the_token(data):
    view, sel = view_of(data, image=6, layer=0, head=0, source_token=0, target_token=2)
    A = attention(6)[0, 0]
    for panel, mask in ((0, [A[0, 1 + k] for k in range(GRID * GRID)]), (1, [A[1 + k, 2] for k in range(GRID**2)])):
        alpha = rgba_bytes(view.masks.overlay.data["image"][panel])[..., 3]  # row 0 = top patch row
        for k, v in enumerate(mask):
            r, c = divmod(k, GRID)
            assert alpha[r, c] == round(DIM * (1 - float(v) / max(mask)) * 255)
        assert alpha[divmod(int(np.argmax(mask)), GRID)] == 0  # the most attended patch stays clear
    xs, ys = view.masks.outline.data["x"], view.masks.outline.data["y"]
    assert len(xs) == 1  # CLS has no patch; patch 1 (token 2) on the target panel
    assert 2 * (1 + GAP) + 1 / GRID < xs[0] < 2 * (1 + GAP) + 2 / GRID and 1 - 1 / GRID < ys[0] < 1
    plot = MaskPlot(ColumnDataSource({"image": []}), 1, GRID)
    B = np.zeros((P, P))
    B[5, 1 + 6], B[5, 1 + 9] = 1.0, 0.5  # token 5 attends patch 6 fully, patch 9 half, nothing else
    plot.show(B, 5, 5)
    alpha = rgba_bytes(plot.overlay.data["image"][0])[..., 3]
    assert alpha[divmod(6, GRID)] == 0 and alpha[divmod(9, GRID)] == round(DIM * 0.5 * 255)
    assert alpha[0, 0] == round(DIM * 255) and np.array_equal(rgba_bytes(dimming(B[5, 1:].reshape(GRID, GRID))),
                                                              rgba_bytes(plot.overlay.data["image"][0]))
    plot.show(None, 5, 5)
    assert plot.outline.data == {"x": [], "y": []}


# -- attention: cache and errors --------------------------------------------------------------------------


def test_attention_is_called_once_per_image_and_layer(data):
    fn = CountingAttention(attention)
    view, sel = view_of(data, fn, image=0)
    for change in ({"layer": 1, "head": 2}, {"threshold": 0.1}, {"source_token": 3}, {"layout": "patch"},
                   {"threshold": None}, {"head": 0}, {"layer": 0}):
        sel.param.update(**change)
        view.update(set(change))
    assert fn.calls == {(0, 0): 1, (0, 1): 1}  # each layer once; heads and back to a held layer: nothing asked
    sel.image = 1
    view.update({"image"})
    sel.param.update(layer=1, head=0)
    view.update({"layer", "head"})
    assert fn.calls == {(0, 0): 1, (0, 1): 1, (1, 0): 1, (1, 1): 1}
    check_lines(view.matrix.segments.data, attention(1)[1, 0], view.threshold())


def test_attention_errors_become_one_line_messages_and_never_raise(data):
    def broken(image: int, layer: int) -> np.ndarray:
        if image == 3:
            raise VitscopeError(f"image {image} could not be read\nmore detail")
        if image == 4:
            raise RuntimeError("CUDA out of memory\nTraceback (most recent call last): ...")
        return attention(image, layer)

    view, sel = view_of(data, broken, image=3)
    assert view.attention_matrix() is None
    assert sel.message == "attention of image 3: image 3 could not be read" and view.error == sel.message
    assert len(view.matrix.segments.data["value"]) == 0 and view.masks.outline.data == {"x": [], "y": []}
    assert sel.message in view.info.text
    sel.image = 4
    view.update({"image"})
    assert sel.message == "attention of image 4: CUDA out of memory" and one_line(sel.message)
    sel.image = 7  # a good image clears the attention's message
    view.update({"image"})
    assert sel.message == "" and view.error == "" and len(view.matrix.segments.data["value"]) > 0
    assert isinstance(pn.panel(view.bokeh()).get_root(), Model)


def test_wrong_shape_is_a_message(data):
    view, sel = view_of(data, lambda image, layer: np.zeros((1, 3, 3)), image=0)
    assert view.attention_matrix() is None and "shape" in sel.message and one_line(sel.message)


def test_out_of_range_and_unreadable_images_are_messages(data):
    fn = CountingAttention(attention)
    view, sel = view_of(data, fn, image=N + 5)
    assert view.attention_matrix() is None and "out of range" in sel.message and one_line(sel.message)
    assert "not a readable image" in view.info.text
    sel.image = UNREADABLE[0]
    view.update({"image"})
    assert view.attention_matrix() is None and "could not be read" in sel.message
    assert fn.calls == {}  # the model is never asked about an image the store does not have


def test_head_info_names_the_pattern_scores_and_distance(data):
    view, sel = view_of(data)
    assert "Select an image" in view.info.text
    none = PATTERNS.index("none")
    seen_second = seen_none = False
    for image in range(N):
        if not data.valid[image]:
            continue
        for layer, head in ((1, 0), (0, 2), (1, 1)):
            sel.param.update(image=image, layer=layer, head=head)
            view.update({"image", "layer", "head"})
            label, offset = int(data.pattern_label[image, layer, head]), int(data.pattern_offset[image, layer, head])
            second = int(data.pattern_second[image, layer, head])
            names = [PATTERNS[k] + (f" ({OFFSETS[offset]})" if PATTERNS[k] == "diagonal" else "")
                     for k in (label, second)]
            pattern = names[0] if second == none else f"{names[0]} + {names[1]}"
            seen_second |= second != none
            seen_none |= label == none
            text = view.info.text
            assert f"pattern: <b>{pattern}</b>" in text and f"image {data.image_ids[image].split('/')[-1]} ·" in text
            assert f"<b>{float(data.attention_distance[image, layer, head]):.2f}</b>" in text
            for name, score in zip(BASE_PATTERNS, data.pattern_score[image, layer, head], strict=True):
                assert f"{name} {float(score):.2f}" in text
            kind = HEAD_KINDS[int(data.head_kind[layer, head])]
            assert f"{kind} head (agreement {float(data.head_consistency[layer, head]):.2f})" in text
    assert seen_second and seen_none  # the random store has both
    assert isinstance(pn.panel(view.bokeh()).get_root(), Model)
