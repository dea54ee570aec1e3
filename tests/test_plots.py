"""vitscope.plots: every element's data against values computed here from the store's arrays with xarray, the
elements compose, `render` writes valid SVG / PDF / PNG, `linked()` follows stream events, and the notebook runs.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import holoviews as hv
import numpy as np
import panel as pn
import pytest
import xarray as xr
from app_helpers import fake_attention, fake_explanation, make_store
from bokeh.models import ColumnDataSource
from holoviews.operation.datashader import rasterize
from holoviews.plotting.bokeh.chart import BarPlot, CurvePlot
from test_effects_plots import layer, reference_rho

import vitscope.plots as vp
from vitscope.analysis.binary import top_count
from vitscope.config import BuildConfig
from vitscope.errors import VitscopeError
from vitscope.readout.store_data import StoreData
from vitscope.vocab import HEAD_KINDS, MODES, PATTERNS, PROXIES, WHOLE_HEAD

N, L, H, GRID, CLASSES = 30, 3, 4, 4, 6
UNREADABLE = (2, 5)
IMAGE, LAYER, HEAD = 7, 1, 2
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("plots") / "s.zarr", N, L, H, GRID, CLASSES, UNREADABLE)


@pytest.fixture(scope="module")
def data(store) -> StoreData:
    return StoreData(store)


@pytest.fixture(scope="module")
def ds(store) -> xr.Dataset:
    """The store as xarray sees it: the references below never go through StoreData."""
    return xr.open_zarr(store, consolidated=False)


@pytest.fixture(scope="module")
def readable(ds) -> xr.Dataset:
    return ds.isel(image=np.flatnonzero(ds["valid"].values))


@pytest.fixture(scope="module")
def attention(data) -> np.ndarray:
    return fake_attention(L, H, data.tokens)(IMAGE)


@pytest.fixture(scope="module")
def explanation(ds) -> dict:
    return fake_explanation(IMAGE, int(ds["label"].values[IMAGE]), GRID)


def values(element, dim) -> np.ndarray:
    return np.asarray(element.dimension_values(dim), dtype=float)


# -- the views -----------------------------------------------------------------------------------------------


def test_image_overview_is_the_placed_readable_images(data, ds):
    points = vp.image_overview(data, "P[true]")
    xy = ds["image_xy"].values
    placed = np.flatnonzero(ds["valid"].values & np.isfinite(xy).all(1))
    assert not set(UNREADABLE) & set(placed.tolist())
    np.testing.assert_array_equal(points.dimension_values("image"), placed)
    np.testing.assert_allclose(values(points, "x"), xy[placed, 0])
    np.testing.assert_allclose(values(points, "y"), xy[placed, 1])
    np.testing.assert_allclose(values(points, "p_true"), ds["baseline_prob"].values[placed])
    names = [str(c) for c in ds["class_name"].values]
    assert list(points.dimension_values("class")) == [names[c] for c in ds["label"].values[placed]]
    assert list(points.dimension_values("image_id")) == [str(ds["image_id"].values[i]) for i in placed]
    top1 = ds["topk_idx"].sel(mode=0).isel(layer=0, head=0, k=0).values[placed]
    right = top1 == ds["label"].values[placed]
    assert list(points.dimension_values("correct")) == ["top-1 right" if r else "top-1 wrong" for r in right]
    assert points.get_dimension("p_true").label == "P[true]"
    cls = int(ds["label"].values[placed[0]])
    only = vp.image_overview(data, "class", cls=cls)
    assert set(only.dimension_values("class")) == {names[cls]} and len(only) == int((ds["label"].values[placed]
                                                                                      == cls).sum())
    with pytest.raises(ValueError, match="colour_by"):
        vp.image_overview(data, "nonsense")


def test_head_importance_is_the_mean_and_std_over_readable_images(data, readable):
    overlay = vp.head_importance(data, "jsd", 3)
    spread, curve, dots = overlay.Spread.I, overlay.Curve.I, overlay.Scatter.I
    ref = readable["importance"].sel(mode=3, metric="jsd").transpose("image", "layer", "head")
    np.testing.assert_allclose(values(curve, "jsd"), ref.mean("image").values.ravel(), rtol=1e-5)
    np.testing.assert_allclose(values(spread, "std"), ref.std("image").values.ravel(), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(values(dots, "layer"), np.repeat(np.arange(L), H))
    assert curve.kdims[0].label == "head (layer × heads + head)" and curve.vdims[0].label == "JSD(P, P')"


def test_head_importance_of_one_image_has_no_band(data, ds):
    overlay = vp.head_importance(data, "prob", WHOLE_HEAD, image=IMAGE)
    assert "Spread" not in overlay.keys()[0] and len(overlay) == 2
    ref = ds["importance"].sel(mode=WHOLE_HEAD, metric="prob").isel(image=IMAGE).transpose("layer", "head")
    np.testing.assert_allclose(values(overlay.Curve.I, "prob"), ref.values.ravel())
    assert f"image {IMAGE}" in overlay.opts.get().kwargs["title"]


def test_mode_bars_are_the_head_in_every_mode(data, ds):
    bars = vp.mode_bars(data, LAYER, HEAD, "cls_dist", image=IMAGE)
    ref = ds["importance"].sel(metric="cls_dist").isel(image=IMAGE, layer=LAYER, head=HEAD).sel(mode=list(MODES))
    np.testing.assert_allclose(values(bars, "cls_dist"), ref.values)
    assert list(bars.dimension_values("mode")) == list(MODES)


def test_strength_scatter_and_vector(data, readable, ds):
    scatter = vp.strength_scatter(data)
    ent = readable["strength_entropy"].transpose("image", "layer", "head").mean("image").values.ravel()
    dist = readable["attention_distance"].transpose("image", "layer", "head").mean("image").values.ravel()
    np.testing.assert_allclose(values(scatter, "strength_entropy"), ent, rtol=1e-5)
    np.testing.assert_allclose(values(scatter, "attention_distance"), dist, rtol=1e-5)
    assert np.all(np.abs(values(scatter, "x") - np.repeat(np.arange(L), H)) < 0.5)  # each head in its layer's column
    assert scatter.get_dimension("attention_distance").unit == "patches"
    bars = vp.strength_vector(data, LAYER, HEAD, image=IMAGE)
    np.testing.assert_allclose(values(bars, "strength"), ds["strength"].isel(image=IMAGE, layer=LAYER,
                                                                             head=HEAD).values)
    np.testing.assert_array_equal(values(bars, "hop"), np.arange(GRID))
    mean = vp.strength_vector(data, LAYER, HEAD)
    np.testing.assert_allclose(values(mean, "strength"), readable["strength"].isel(layer=LAYER, head=HEAD)
                               .mean("image").values, rtol=1e-5)


def test_entropy_distribution_is_the_share_of_images_per_bin(data, readable, ds):
    overlay = vp.entropy_distribution(data, LAYER, HEAD, image=IMAGE)
    hist, line = overlay.Histogram.I, overlay.VLine.I
    v = readable["strength_entropy"].isel(layer=LAYER, head=HEAD).values
    counts, edges = np.histogram(v, bins=np.linspace(0, 1, 41))
    np.testing.assert_allclose(values(hist, "share"), counts / len(v))
    np.testing.assert_allclose(hist.edges, edges)
    assert line.data == pytest.approx(float(ds["strength_entropy"].isel(image=IMAGE, layer=LAYER, head=HEAD)))
    assert len(vp.entropy_distribution(data, LAYER, HEAD)) == 1  # no image: no marker


def test_pattern_map_aggregates_every_head(data, ds):
    xy = ds["head_xy_cls"].values.reshape(-1, 2)
    finite = np.isfinite(xy).all(1)
    points = vp.head_points_all(data, "cls")
    assert len(points) == int(finite.sum())
    np.testing.assert_allclose(values(points, "x"), xy[finite, 0])
    counts = rasterize(points, dynamic=False, width=50, height=50, x_range=data.bounds("cls")[::2],
                       y_range=data.bounds("cls")[1::2])
    assert float(np.nansum(counts.dimension_values(2))) == finite.sum()  # every point lands in one pixel
    shown = vp.pattern_map(data, "cls", LAYER, HEAD, dynamic=False, size=60)
    rgb, mine = shown.RGB.I, next(e for e in shown if isinstance(e, hv.Points))
    assert rgb.dimension_values(3, flat=False).shape == (60, 60) and (rgb.dimension_values(3) > 0).any()
    inst = ds["head_xy_cls"].isel(layer=LAYER, head=HEAD).values
    ok = ds["valid"].values & np.isfinite(inst).all(1)
    np.testing.assert_allclose(values(mine, "x"), inst[ok, 0])
    dynamic = vp.pattern_map(data, "patch")
    assert isinstance(dynamic, hv.DynamicMap)  # re-aggregates on zoom in a notebook
    frame = dynamic[()]  # its first frame: every head of the patch layout, shaded over the layout's extent
    x0, y0, x1, y1 = data.bounds("patch")
    assert frame.bounds.lbrt() == pytest.approx((x0, y0, x1, y1)) and (frame.dimension_values(3) > 0).any()


def test_attention_heatmap_is_the_head_matrix(attention):
    image = vp.attention_heatmap(attention, LAYER, HEAD, prefix=1)
    np.testing.assert_allclose(image.dimension_values("attention", flat=False), attention[LAYER, HEAD])
    assert [d.label for d in image.kdims] == ["target token (0 = CLS)", "source token (0 = CLS)"]
    with pytest.raises(ValueError, match="L, H, P, P"):
        vp.attention_heatmap(attention[0], LAYER, HEAD)


def test_two_axes_draws_the_values_above_the_cut(data, attention):
    A = attention[LAYER, HEAD]
    cut = 0.05
    seg = vp.two_axes(attention, LAYER, HEAD, data.num_prefix, threshold=cut)
    src, tgt = np.nonzero(A > cut)
    assert len(seg) == len(src) > 0
    got = sorted(zip(values(seg, "token").astype(int), values(seg, "token_end").astype(int), strict=True))
    assert got == sorted(zip(src.tolist(), tgt.tolist(), strict=True))
    assert set(values(seg, "side")) == {1.0} and set(values(seg, "side_end")) == {0.0}
    default = vp.two_axes(attention, LAYER, HEAD, 1, top=0.05)  # the store's cut: its top fraction of patch→patch
    s, t = values(default, "token"), values(default, "token_end")
    assert int(((s >= 1) & (t >= 1)).sum()) == top_count(0.05, GRID * GRID)


def test_two_axes_colours_by_cls_relation(attention):
    seg = vp.two_axes(attention, LAYER, HEAD, 1, threshold=0.0)
    s, t = values(seg, "token").astype(int), values(seg, "token_end").astype(int)
    cls = (s == 0) | (t == 0)
    assert list(seg.dimension_values("kind")) == ["CLS-related" if c else "patch→patch" for c in cls]


def test_masks_binarise_the_token_row_and_column(data, attention):
    A = attention[LAYER, HEAD]
    layout = vp.masks(data, attention, IMAGE, LAYER, HEAD, source=3, target=5, top=0.25)
    src_panel, tgt_panel = layout.values()
    patch = A[1:, 1:].ravel()
    cut = np.sort(patch)[::-1][top_count(0.25, GRID * GRID)]  # the (k+1)-th largest
    for panel, mask in ((src_panel, A[3, 1:]), (tgt_panel, A[1:, 5])):
        veil = panel.Image.I.dimension_values("dimmed", flat=False)
        want = 1.0 - (mask.reshape(GRID, GRID) > cut)
        np.testing.assert_array_equal(np.flipud(veil), want)  # hv.Image rows run bottom → top
        np.testing.assert_array_equal(panel.RGB.I.dimension_values(0, flat=False).shape[:2],
                                      data.thumbnail(IMAGE).shape[:2])
    with pytest.raises(VitscopeError, match="could not be read"):
        vp.masks(data, attention, UNREADABLE[0], LAYER, HEAD)


def test_binary_map_is_the_stored_index(data, ds):
    image = vp.binary_map(data, IMAGE, LAYER, HEAD)
    B = image.dimension_values("binary", flat=False)
    index = ds["binary_index"].isel(image=IMAGE, layer=LAYER, head=HEAD).values.astype(int)
    size = GRID * GRID
    assert B.shape == (size, size) and int(B.sum()) == len(set(index.tolist()))
    rows, cols = np.divmod(index, size)
    assert (B[rows, cols] == 1).all()


# -- the summaries ------------------------------------------------------------------------------------------


def test_importance_matrix_is_the_layer_head_mean(data, readable):
    heat = vp.importance_matrix(data, "prob", WHOLE_HEAD)
    ref = readable["importance"].sel(mode=WHOLE_HEAD, metric="prob").mean("image").transpose("layer", "head")
    got = {(int(l_), int(h)): v for h, l_, v in zip(heat.dimension_values("head"), heat.dimension_values("layer"),
                                                    heat.dimension_values("prob"), strict=True)}
    for i in range(L):
        for h in range(H):
            assert got[i, h] == pytest.approx(float(ref.values[i, h]), rel=1e-5)
    assert heat.kdims[1].label == "layer"


def test_layer_trends_are_means_over_images_and_heads(data, readable):
    dist, ent = vp.layer_trends(data).values()
    for panel, name in ((dist, "attention_distance"), (ent, "strength_entropy")):
        ref = readable[name].mean(("image", "head")).values
        np.testing.assert_allclose(values(panel.Curve.I, name), ref, rtol=1e-5)
        np.testing.assert_array_equal(values(panel.Curve.I, "layer"), np.arange(L))


def test_pattern_kind_matrix_counts(data, ds, readable):
    kinds, patterns = vp.pattern_kind_matrix(data).values()
    kind = ds["head_kind"].values
    got = {(k, int(i)): c for k, i, c in zip(kinds.dimension_values("kind"), kinds.dimension_values("layer"),
                                             kinds.dimension_values("count"), strict=True)}
    for i in range(L):
        for k, name in enumerate(HEAD_KINDS):
            assert got[name, i] == int((kind[i] == k).sum())
        assert sum(got[name, i] for name in [*HEAD_KINDS, "unknown"]) == H
    labels = readable["pattern_label"].values
    share = {(p, int(i)): s for p, i, s in zip(patterns.dimension_values("pattern"),
                                               patterns.dimension_values("layer"),
                                               patterns.dimension_values("share"), strict=True)}
    for i in range(L):
        for p, name in enumerate(PATTERNS):
            assert share[name, i] == pytest.approx(float((labels[:, i] == p).mean()))


def test_proxy_vs_exact_is_the_per_head_means(data, readable):
    scatter = vp.proxy_vs_exact(data, signed=True)
    np.testing.assert_allclose(values(scatter, "proxy"), readable["grad_importance"].mean("image").values.ravel(),
                               rtol=1e-5)
    p0 = readable["baseline_prob"].values[:, None, None].astype(np.float64)
    p1 = readable["importance"].sel(mode=WHOLE_HEAD, metric="prob").values.astype(np.float64)
    tiny = np.finfo(np.float32).tiny
    exact = (np.log(np.maximum(p0, tiny)) - np.log(np.maximum(p1, tiny))).mean(0)
    np.testing.assert_allclose(values(scatter, "exact"), exact.ravel(), rtol=1e-4, atol=1e-6)
    rho = data.proxy_agreement(True).of_means
    assert f"{rho:+.2f}" in scatter.opts.get().kwargs["title"]


# -- composing, rendering, the registry -----------------------------------------------------------------------


def test_elements_compose_and_keep_their_dimensions(data, readable):
    line, bars = vp.head_importance(data), vp.strength_vector(data, LAYER, HEAD)
    layout = line + bars + vp.importance_matrix(data)
    assert isinstance(layout, hv.Layout) and len(layout) == 3
    overlay = vp.strength_scatter(data) * hv.HLine(0.5)
    assert isinstance(overlay, hv.Overlay) and len(overlay) == 2
    assert bars.kdims[0].label == "k-hop neighbours" and bars.kdims[0].unit == "patches"
    # both backends draw the composition, with the store's numbers: the mean importance line and the mean strength
    mean = readable["importance"].sel(mode=WHOLE_HEAD, metric="prob").mean("image").transpose("layer", "head")
    mean = mean.values.ravel()
    strength = readable["strength"].isel(layer=LAYER, head=HEAD).mean("image").values
    drawn = [np.asarray(s.data[k], dtype=float) for s in hv.render(layout, backend="bokeh").select(
        {"type": ColumnDataSource}) for k in ("prob", "strength") if k in s.data]
    assert any(len(d) == len(mean) and np.allclose(d, mean, rtol=1e-5) for d in drawn), drawn
    assert any(len(d) == len(strength) and np.allclose(d, strength, rtol=1e-5) for d in drawn), drawn
    lines = [np.asarray(ln.get_ydata(), dtype=float) for ax in hv.render(layout, backend="matplotlib").axes
             for ln in ax.get_lines()]
    assert any(len(y) == len(mean) and np.allclose(y, mean, rtol=1e-5) for y in lines), lines


@pytest.mark.parametrize("fmt", ["svg", "pdf", "png"])
def test_render_writes_a_valid_file(data, tmp_path, fmt):
    element = vp.head_importance(data) + vp.importance_matrix(data)
    out = vp.render(element, tmp_path / f"fig.{fmt}")
    raw = out.read_bytes()
    assert len(raw) > 1000
    if fmt == "svg":
        root = ET.fromstring(raw)
        assert root.tag.endswith("svg")
        texts = "".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
        assert "layer" in texts  # text stays text (svg.fonttype none): the axis labels are searchable
    elif fmt == "pdf":
        assert raw.startswith(b"%PDF-") and b"%%EOF" in raw[-64:]
    else:
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")


def test_render_shows_class_names_as_plain_text(store, tmp_path):
    """A class name is data: `$…$` in it is not mathtext and markup in it is not markup, in the saved figure."""
    odd = StoreData(store)
    name = "$\\frac{a$ {label} <b>x</b> & 50%"
    odd.class_names = [name] * len(odd.class_names)
    element = vp.head_importance(odd, cls=0)
    fig = hv.render(element, backend="bokeh")  # HoloViews formats titles: braces in the name are not fields
    assert fig.title.text.endswith(f"mean of class {name}, mode 1 (whole head)")
    root = ET.fromstring(vp.render(element, tmp_path / "odd.svg").read_bytes())
    texts = "".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    assert name in texts


def test_render_takes_the_format_argument_and_refuses_others(data, tmp_path):
    out = vp.render(vp.strength_scatter(data), tmp_path / "noext", "png")
    assert out.read_bytes().startswith(b"\x89PNG")
    shaded = vp.render(vp.pattern_map(data), tmp_path / "map.png")  # a DynamicMap: its first frame, full extent
    assert shaded.read_bytes().startswith(b"\x89PNG") and shaded.stat().st_size > 1000
    with pytest.raises(ValueError, match="svg, pdf, png"):
        vp.render(vp.strength_scatter(data), tmp_path / "x.gif")


def registry_checks(ds: xr.Dataset, readable: xr.Dataset, attention: np.ndarray, explanation: dict) -> dict:
    """For each registered figure, a check of its element built for (IMAGE, LAYER, HEAD) against the store's arrays
    (read with xarray), the image's attention and its explanation: the registry must hand each view the image, head,
    attention and explanation."""
    one = ds.isel(image=IMAGE)
    head = one.isel(layer=LAYER, head=HEAD)
    valid = ds["valid"].values
    A = attention[LAYER, HEAD]
    grid = int(np.sqrt(A.shape[0] - 1))

    def close(got, want, **kw):
        np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), **kw)

    def overview(e):
        xy = ds["image_xy"].values
        placed = np.flatnonzero(valid & np.isfinite(xy).all(1))
        close(values(e, "x"), xy[placed, 0])
        close(values(e, "y"), xy[placed, 1])

    def pattern_map(e):
        inst = ds["head_xy_cls"].isel(layer=LAYER, head=HEAD).values
        ok = valid & np.isfinite(inst).all(1)
        close(values(next(p for p in e if isinstance(p, hv.Points)), "x"), inst[ok, 0])
        assert (e.RGB.I.dimension_values(3) > 0).any()  # the shaded heads

    def binary(e):
        B = e.dimension_values("binary", flat=False)
        index = head["binary_index"].values.astype(int)
        want = np.zeros(B.shape)
        want[np.divmod(index, B.shape[1])] = 1
        close(B, want)

    def masks(e):
        for panel, mask in zip(e.values(), (A[0, 1:], A[1:, 0]), strict=True):  # token 0 (CLS): graded
            shown = np.flipud(mask.reshape(grid, grid)) / mask.max()  # hv.Image rows run bottom → top
            close(panel.Image.I.dimension_values("dimmed", flat=False), 1.0 - shown, rtol=1e-6)

    def two_axes(e):
        pairs = set(zip(values(e, "token").astype(int), values(e, "token_end").astype(int), strict=True))
        patch = [(s, t) for s, t in pairs if s >= 1 and t >= 1]
        top = float(json.loads(ds.attrs.get("fingerprint", "{}")).get("top", BuildConfig.top))  # the store's cut
        assert len(patch) == top_count(top, grid * grid)
        assert all(A[s, t] > 0 for s, t in pairs)

    def explain_maps(e):
        for panel, (m, flat) in zip(e.values(), explanation["maps"].items(), strict=True):
            close(np.flipud(panel.Image.I.dimension_values(m, flat=False)), np.reshape(flat, (GRID, GRID)))

    def explain_curves(e):
        method, direction = "grad_rollout", "least_relevant_first"
        curve = e.values()[1].values()[2]
        assert curve.label.startswith(method)
        close(values(curve, "p_target"), explanation["curves"][method][direction])

    def kinds(e):
        counts = e.values()[0]
        got = {(k, int(i)): c for k, i, c in zip(counts.dimension_values("kind"), counts.dimension_values("layer"),
                                                 counts.dimension_values("count"), strict=True)}
        kind = ds["head_kind"].values
        for i in range(L):
            for k, name in enumerate(HEAD_KINDS):
                assert got[name, i] == int((kind[i] == k).sum()), (name, i)

    return {
        "overview": overview,
        "importance": lambda e: close(values(e.Curve.I, "prob"), one["importance"].sel(mode=WHOLE_HEAD, metric="prob")
                                      .transpose("layer", "head").values.ravel()),
        "modes": lambda e: close(values(e, "prob"), head["importance"].sel(metric="prob", mode=list(MODES)).values),
        "strength": lambda e: close(values(e, "strength_entropy"), one["strength_entropy"]
                                    .transpose("layer", "head").values.ravel()),
        "strength-vector": lambda e: close(values(e, "strength"), head["strength"].values),
        "entropy": lambda e: close(e.VLine.I.data, float(head["strength_entropy"])),
        "pattern-map": pattern_map,
        "binary-map": binary,
        "heatmap": lambda e: close(e.dimension_values("attention", flat=False), A),
        "two-axes": two_axes,
        "masks": masks,
        "explain-maps": explain_maps,
        "explain-curves": explain_curves,
        "importance-matrix": lambda e: close(
            [v for _, v in sorted(zip(zip(e.dimension_values("layer"), e.dimension_values("head"), strict=True),
                                      e.dimension_values("prob"), strict=True))],
            readable["importance"].sel(mode=WHOLE_HEAD, metric="prob").mean("image").transpose("layer", "head")
            .values.ravel(), rtol=1e-5),
        "layer-trends": lambda e: close(values(e.values()[0].Curve.I, "attention_distance"),
                                        readable["attention_distance"].mean(("image", "head")).values, rtol=1e-5),
        "pattern-kinds": kinds,
        "proxy-vs-exact": lambda e: close(values(e, "proxy"), readable["grad_importance"].mean("image").values.ravel(),
                                          rtol=1e-5),
        "direct-vs-total": lambda e: close(values(layer(e, hv.Scatter), "total"), one["total_effect"].values.ravel()),
        "proxy-table": lambda e: close(values(layer(e, hv.ErrorBars), "rho"),
                                       [r["median"] for r in reference_rho(ds, np.array([IMAGE]), PROXIES)]),
    }


def test_every_registered_figure_shows_the_stores_numbers_and_renders(data, ds, readable, attention, explanation,
                                                                     tmp_path):
    checks = registry_checks(ds, readable, attention, explanation)
    assert sorted(checks) == sorted(vp.FIGURES)
    for name, fig in vp.FIGURES.items():
        element = vp.build(name, data, image=IMAGE, layer=LAYER, head=HEAD, attention=attention, explain=explanation)
        assert fig.about
        checks[name](element)
    vp.render(vp.build("pattern-map", data, layer=LAYER, head=HEAD), tmp_path / "map.png")
    with pytest.raises(VitscopeError, match="needs the image's attention"):
        vp.build("heatmap", data, image=IMAGE)
    with pytest.raises(VitscopeError, match="shows one image"):
        vp.build("masks", data, attention=attention)
    with pytest.raises(VitscopeError, match="no figure"):
        vp.build("nope", data)
    with pytest.raises(VitscopeError, match="no head"):
        vp.build("modes", data, layer=L)


# -- linked ---------------------------------------------------------------------------------------------------


def test_linked_views_follow_stream_events(data, ds, readable):
    dash = vp.linked(data)
    hv.renderer("bokeh").get_plot(dash.figures)  # as in a notebook: the streams are attached to plots
    row = 4
    image = int(dash.overview.dimension_values("image")[row])
    dash.image_pick.event(index=[row])
    assert dash.selection.image == image
    line = dash.importance[()]
    ref = ds["importance"].sel(mode=WHOLE_HEAD, metric="prob").isel(image=image).values.ravel()
    np.testing.assert_allclose(values(line.Curve.I, "prob"), ref)
    ent = ds["strength_entropy"].isel(image=image).values.ravel()
    np.testing.assert_allclose(values(dash.strength[()], "strength_entropy"), ent)
    np.testing.assert_allclose(values(dash.marker[()], "x"), ds["image_xy"].values[image, :1])  # its ring

    dash.head_tap.event(x=6.2, y=0.0)  # the importance line: flat head 6
    assert (dash.selection.layer, dash.selection.head) == divmod(6, H)
    np.testing.assert_allclose(values(dash.strength_vector[()], "strength"),
                               ds["strength"].isel(image=image, layer=1, head=2).values)
    assert dash.entropy[()].VLine.I.data == pytest.approx(float(ds["strength_entropy"][image, 1, 2]))

    dash.head_pick.event(index=[H * 2 + 3])  # a head in the strength scatter
    assert (dash.selection.layer, dash.selection.head) == (2, 3)
    np.testing.assert_allclose(values(dash.modes[()], "prob"),
                               ds["importance"].sel(metric="prob").isel(image=image, layer=2, head=3).values)
    x, y = (float(v) for v in ds["head_xy_cls"].values[9, 0, 3])
    dash.map_tap.event(x=x, y=y)  # the pattern map: that head of that image (the nearest point)
    assert (dash.selection.image, dash.selection.layer, dash.selection.head) == (9, 0, 3)
    inst = ds["head_xy_cls"].isel(layer=0, head=3).values[ds["valid"].values]
    np.testing.assert_allclose(values(dash.instances[()], "x"), inst[:, 0])
    dash.image_pick.event(index=[])  # deselect: back to the mean over all images
    assert dash.selection.image is None
    np.testing.assert_allclose(values(dash.strength_vector[()], "strength"),
                               readable["strength"].isel(layer=0, head=3).mean("image").values, rtol=1e-5)


def test_linked_choice_set_from_python_updates_the_plots(data):
    """No event sent by hand: the Params stream on the choice redraws the rendered bokeh figures themselves."""
    dash = vp.linked(data, metric="jsd")
    plot = hv.renderer("bokeh").get_plot(dash.figures)
    (curve,) = plot.traverse(lambda p: p, [CurvePlot])  # the importance line
    bars = [p for p in plot.traverse(lambda p: p, [BarPlot]) if "k-hop" in p.handles["plot"].title.text]
    np.testing.assert_allclose(curve.handles["source"].data["jsd"], data.band("jsd", WHOLE_HEAD)[0])
    dash.selection.param.update(image=IMAGE, mode=3, layer=2, head=1)
    np.testing.assert_allclose(curve.handles["source"].data["jsd"], data.metric_values("jsd", 3)[IMAGE])
    (vector,) = bars
    assert "L2H1" in vector.handles["plot"].title.text
    np.testing.assert_allclose(np.asarray(vector.handles["source"].data["strength"], dtype=float),
                               data.strength[IMAGE, 2, 1])
    root = pn.panel(dash).get_root()  # as a notebook shows it: the widgets above the figures
    assert len(root.children) == 2


# -- the notebook -----------------------------------------------------------------------------------------------


def test_plots_notebook_runs_on_a_store(store, tmp_path, monkeypatch):
    """apps/plots.ipynb as written, its STORE pointed at the test's store: each code cell runs."""
    monkeypatch.chdir(tmp_path)
    nb = json.loads((ROOT / "apps" / "plots.ipynb").read_text())
    scope: dict = {}
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells
    for cell in cells:
        src = "".join(cell["source"]).replace('cache_root() / "demo.zarr"', repr(str(store)))
        exec(compile(src, "plots.ipynb", "exec"), scope)
    assert isinstance(scope["dash"], vp.Linked)
    assert (tmp_path / "importance.svg").stat().st_size > 1000


def test_figure_writes_every_view_and_summary(demo16, tmp_path, capsys):
    """`vitscope figure STORE --image I --out DIR --format F`: one file per figure of the registry, each a valid file
    of that format; without --image the views of one image are named as skipped."""
    from vitscope.cli import main
    from vitscope.plots import FIGURES

    assert main(["figure", str(demo16), "--image", "1", "--out", str(tmp_path / "svg"), "--quiet"]) == 0
    assert sorted(p.stem for p in (tmp_path / "svg").iterdir()) == sorted(FIGURES)
    assert all(p.read_text(encoding="utf-8").lstrip().startswith("<?xml") for p in (tmp_path / "svg").iterdir())
    assert main(["figure", str(demo16), "--out", str(tmp_path / "pdf"), "--format", "pdf", "--only",
                 "importance-matrix", "heatmap", "--quiet"]) == 0
    assert [p.name for p in (tmp_path / "pdf").iterdir()] == ["importance-matrix.pdf"]
    assert (tmp_path / "pdf" / "importance-matrix.pdf").read_bytes()[:5] == b"%PDF-"
    assert "heatmap show one image: give --image" in capsys.readouterr().out
    assert main(["figure", str(demo16), "--out", str(tmp_path / "x"), "--only", "nope"]) == 2
    assert "no figure 'nope'" in capsys.readouterr().err


def test_the_apps_save_figure_renders_the_selection(demo16):
    """The app's "save figure" (Explorer given vitscope.plots' renderer, as `vitscope serve` gives it): the chosen
    figure of this session's selection, in the chosen format; the views of one image wait for an image."""
    from vitscope.app import Explorer
    from vitscope.cli.serve import figure_file
    from vitscope.readout import FIGURES

    ex = Explorer(demo16, figures=figure_file)
    assert ex.save.which.options == list(FIGURES)
    save = ex.save
    save.which.value = "heatmap"
    assert save.button.disabled and "pick an image" in save.button.label
    ex.selection.param.update(image=3, layer=2, head=1)
    assert not save.button.disabled and save.button.filename == "heatmap-image3-L2H1.svg"
    svg = save.file().getvalue().decode()
    assert svg.lstrip().startswith("<?xml") and "L2H1" in svg
    save.which.value, save.format.value = "importance-matrix", "pdf"
    assert save.file().getvalue()[:5] == b"%PDF-" and save.button.filename.endswith(".pdf")
    assert Explorer(demo16).save is None  # nobody passed the figures in: no action (Jupyter has vitscope.plots)
