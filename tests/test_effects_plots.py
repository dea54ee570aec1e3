"""The figures of the heads' effects: direct against total effect per head and each proxy's agreement with exact
pruning, checked against the store's arrays read with xarray and ranked with scipy; `vitscope figure` draws them, and
a store built before the effects were stored says so in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import holoviews as hv
import numpy as np
import pytest
import xarray as xr
from app_helpers import drop_effects, make_store
from scipy.stats import spearmanr

import vitscope.plots as vp
from vitscope.errors import VitscopeError
from vitscope.readout import effects
from vitscope.readout.store_data import StoreData
from vitscope.vocab import PROXIES, PROXY_LABELS

IMAGE, UNREADABLE = 5, (2,)
SOURCES = {"gradient": "grad_importance", "direct": "direct_effect", "output_norm": "output_norm",
           "rollout_impact": "rollout_impact"}  # cls_patch_mass: summed from cls_attention below


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("effects_plots") / "s.zarr", images=20, layers=3, heads=4, grid=4,
                      classes=3, unreadable=UNREADABLE)


@pytest.fixture(scope="module")
def data(path) -> StoreData:
    return StoreData(path)


@pytest.fixture(scope="module")
def ds(path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)


@pytest.fixture(scope="module")
def old(path, tmp_path_factory) -> Path:
    """The same store as a vitscope before the effects wrote it."""
    copy = tmp_path_factory.mktemp("effects_plots_old") / "old.zarr"
    shutil.copytree(path, copy)
    return drop_effects(copy)


def values(element, dim) -> np.ndarray:
    return np.asarray(element.dimension_values(dim), dtype=float)


def layer(overlay, kind: type, label: str = ""):
    """The one element of `kind` (and `label`) in an overlay."""
    (found,) = [e for e in overlay if isinstance(e, kind) and e.label == label]
    return found


def proxy_arrays(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """[N, L, H] each proxy's scores, straight from the store's variables."""
    out = {name: ds[var].values.astype(np.float64) for name, var in SOURCES.items()}
    cls = ds["cls_attention"].values.astype(np.float64)
    n = (cls.shape[-1] - 1) // 2
    out["cls_patch_mass"] = cls[..., 1:1 + n].sum(-1)
    return out


def reference_rho(ds: xr.Dataset, images: np.ndarray, order: tuple[str, ...] | None = None):
    """Each proxy's Spearman ρ of |proxy| with |total effect|: per image (median, quartiles) and of the means; by
    name, or a list in `order`."""
    total = np.abs(ds["total_effect"].values.astype(np.float64))[images]
    out = {}
    for name, scores in proxy_arrays(ds).items():
        p = np.abs(scores[images])
        per = [spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(p, total, strict=True)]
        q25, q75 = np.percentile(per, [25, 75])
        out[name] = {"median": float(np.median(per)), "q25": q25, "q75": q75,
                     "of_means": spearmanr(p.mean(0).ravel(), total.mean(0).ravel()).statistic}
    return out if order is None else [out[name] for name in order]


def check_direct_vs_total(element, direct: np.ndarray, total: np.ndarray) -> None:
    """The points are the heads' effects (head order), hover carries the indirect part, and the diagonal y = x
    spans them."""
    points = layer(element, hv.Scatter)
    np.testing.assert_allclose(values(points, "direct"), direct.ravel(), rtol=1e-5)
    np.testing.assert_allclose(values(points, "total"), total.ravel(), rtol=1e-5)
    np.testing.assert_allclose(values(points, "indirect"), (total - direct).ravel(), rtol=1e-4, atol=1e-6)
    heads = total.shape[-1]
    assert list(points.dimension_values("name"))[:heads + 1] == [*(f"L0H{h}" for h in range(heads)), "L1H0"]
    diagonal = layer(element, hv.Curve, "total = direct")
    x, y = values(diagonal, "direct"), values(diagonal, "total")
    np.testing.assert_array_equal(x, y)
    assert x.min() <= min(direct.min(), total.min()) and x.max() >= max(direct.max(), total.max())


def test_direct_vs_total_is_the_image_or_the_mean(data, ds):
    readable = ds.isel(image=np.flatnonzero(ds["valid"].values))
    one = ds.isel(image=IMAGE)
    element = vp.direct_vs_total(data, image=IMAGE)
    check_direct_vs_total(element, one["direct_effect"].values, one["total_effect"].values)
    assert f"image {IMAGE}" in element.opts.get().kwargs["title"]
    mean = vp.direct_vs_total(data)
    check_direct_vs_total(mean, readable["direct_effect"].mean("image").values,
                          readable["total_effect"].mean("image").values)
    assert "mean of all images" in mean.opts.get().kwargs["title"]
    cls = int(ds["label"].values[IMAGE])
    of_class = readable.isel(image=readable["label"].values == cls)
    check_direct_vs_total(vp.direct_vs_total(data, cls=cls), of_class["direct_effect"].mean("image").values,
                          of_class["total_effect"].mean("image").values)


def test_proxy_agreement_is_each_proxys_rho_and_stars_the_best(data, ds):
    images = np.flatnonzero(ds["valid"].values)
    ref = reference_rho(ds, images)
    element = vp.proxy_agreement(data)
    dots = layer(element, hv.Scatter, "median per image (IQR)")
    x, medians = values(dots, "proxy").astype(int), values(dots, "rho")
    np.testing.assert_allclose(medians, [ref[n]["median"] for n in PROXIES], atol=1e-6)
    bars = layer(element, hv.ErrorBars)
    np.testing.assert_allclose(values(bars, "below"), [ref[n]["median"] - ref[n]["q25"] for n in PROXIES], atol=1e-6)
    np.testing.assert_allclose(values(bars, "above"), [ref[n]["q75"] - ref[n]["median"] for n in PROXIES], atol=1e-6)
    means = values(layer(element, hv.Scatter, "ρ of the means"), "rho")
    np.testing.assert_allclose(means, [ref[n]["of_means"] for n in PROXIES], atol=1e-6)
    winner = max(PROXIES, key=lambda n: (ref[n]["median"], ref[n]["of_means"]))
    assert winner == effects.best(data)
    ticks = dict(element.opts.get().kwargs["xticks"])
    assert [ticks[k] for k in x] == [PROXY_LABELS[n] + (" ★" if n == winner else "") for n in PROXIES]
    assert list(values(layer(element, hv.Scatter, "ranks heads best"), "proxy")) == [PROXIES.index(winner)]
    assert f"({len(images)} images)" in element.opts.get().kwargs["title"]
    single = vp.proxy_agreement(data, image=IMAGE)
    one = reference_rho(ds, np.array([IMAGE]))
    bars = layer(single, hv.ErrorBars)
    np.testing.assert_allclose(values(bars, "rho"), [one[n]["median"] for n in PROXIES], atol=1e-6)
    np.testing.assert_allclose(values(bars, "above"), 0, atol=1e-12)  # one image: its own ρ, no spread


def test_a_store_without_effects_says_so_in_one_line(old, tmp_path, capsys):
    from vitscope.cli import main

    for draw in (vp.direct_vs_total, vp.proxy_agreement):
        with pytest.raises(VitscopeError, match=r"^the heads' effects are not in this store \(built by a vitscope "
                                                r"before head effects were stored\): rebuild"):
            draw(old)
    for name in ("direct-vs-total", "proxy-table"):
        with pytest.raises(VitscopeError, match=f"figure '{name}' needs the heads' effects, which are not in this"):
            vp.build(name, old)
    assert main(["figure", str(old), "--out", str(tmp_path / "figs"), "--only", "direct-vs-total", "proxy-table",
                 "importance-matrix", "--quiet"]) == 0
    out = capsys.readouterr().out.strip()
    assert "\n" not in out and "Traceback" not in out
    assert out.startswith("1 figures written") and "direct-vs-total, proxy-table need the heads' effects" in out
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["importance-matrix.svg"]


def test_figure_draws_them_to_svg(path, tmp_path):
    from vitscope.cli import main

    assert main(["figure", str(path), "--image", str(IMAGE), "--out", str(tmp_path), "--only", "direct-vs-total",
                 "proxy-table", "--quiet"]) == 0
    dvt, table = (tmp_path / f"{n}.svg" for n in ("direct-vs-total", "proxy-table"))
    assert dvt.read_text(encoding="utf-8").lstrip().startswith("<?xml") and f"image {IMAGE}" in dvt.read_text()
    assert "★" in table.read_text(encoding="utf-8")
