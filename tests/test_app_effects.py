"""The head effects in the app: the Head Importance View's proxy selector (the dashed line and its agreement with
exact pruning, per scope) and the direct-vs-total scatter, checked against the store itself; an older store keeps
the gradient alone and says why the rest is missing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.stats
import xarray as xr
import zarr
from bokeh.events import Tap

from vitscope.app.effects import DirectTotalView
from vitscope.app.importance import HeadImportanceView
from vitscope.readout.effects import EFFECTS_MISSING, best, scope_table
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.vocab import HEAD_EFFECTS, PROXIES, PROXY_LABELS


@pytest.fixture(scope="module")
def data(demo16) -> StoreData:
    return StoreData(demo16)


@pytest.fixture(scope="module")
def ds(demo16) -> xr.Dataset:
    return xr.open_zarr(str(demo16)).load()


@pytest.fixture(scope="module")
def old(demo16, tmp_path_factory) -> StoreData:
    """The same store as one built before the head effects were stored."""
    out = tmp_path_factory.mktemp("v4") / "s.zarr"
    shutil.copytree(demo16, out)
    for name in HEAD_EFFECTS:
        shutil.rmtree(out / name)
    zarr.open_group(str(out), mode="r+").attrs["vitscope_schema"] = 4
    zarr.consolidate_metadata(str(out))
    return StoreData(out)


def stored_scores(ds: xr.Dataset, proxy: str) -> np.ndarray:
    """[N, L·H] a proxy's scores read straight from the store's variables."""
    if proxy == "cls_patch_mass":
        cls = ds["cls_attention"].values.astype(np.float64)  # stored in half precision: summed in double
        n = (cls.shape[-1] - 1) // 2
        values = cls[..., 1:1 + n].sum(-1)
    else:
        values = ds[{"gradient": "grad_importance", "direct": "direct_effect"}.get(proxy, proxy)].values
    return values.reshape(len(values), -1).astype(np.float64)


def test_the_dashed_line_is_the_chosen_proxy_as_stored(data, ds):
    sel = Selection()
    view = HeadImportanceView(data, sel)
    assert view.proxy == view.proxy_select.value == best(data) and list(view.proxy_select.options.values()) == \
        list(PROXIES)
    valid = ds["valid"].values
    cls = int(ds["label"].values[valid][0])
    for proxy in PROXIES:
        view.pick_proxy(proxy)
        assert view.proxy_axis.axis_label == f"{PROXY_LABELS[proxy]} (dashed)"
        scores = stored_scores(ds, proxy)
        for image, cls_ in ((None, None), (3, None), (None, cls)):
            sel.param.update(image=image, cls=cls_)
            view.update({"image", "cls"})
            scope = (np.arange(len(valid)) == image if image is not None else
                     valid & ((ds["label"].values == cls_) if cls_ is not None else True))
            want = scores[image] if image is not None else scores[scope].mean(0)
            np.testing.assert_allclose(view.source.data["proxy"], want, rtol=1e-5, err_msg=(proxy, image, cls_))
            ticks = view.proxy_axis.ticker.ticks
            assert ticks[0] == pytest.approx(want.min(), rel=1e-5) and ticks[-1] == pytest.approx(want.max(), rel=1e-5)


def test_the_agreement_text_is_the_scope_table(data, ds):
    sel = Selection()
    view = HeadImportanceView(data, sel)
    total = ds["total_effect"].values.reshape(len(ds["valid"]), -1)
    for proxy in ("direct", "rollout_impact"):
        view.pick_proxy(proxy)
        for image in (None, 5):
            sel.image = image
            view.update({"image"})
            t, top = scope_table(data, image)[proxy], best(data, image)
            m = t.magnitude
            text = view.proxy_text.text
            if image is None:
                q25, q75 = m.quartiles
                assert (f"<b>{m.median:+.2f}</b> [{q25:+.2f}, {q75:+.2f}] median [IQR] per image, of the means "
                        f"{m.of_means:+.2f} ({m.images} images)") in text
            else:  # one image: its own ρ, as scipy ranks |proxy| against |total effect|
                rho = scipy.stats.spearmanr(np.abs(stored_scores(ds, proxy)[5]), np.abs(total[5])).statistic
                assert f"image 5: <b>{rho:+.2f}</b>" in text and m.median == pytest.approx(rho, abs=1e-9)
            assert f"★ best here: {PROXY_LABELS[top]}" in text
            np.testing.assert_allclose(view.agree_source.data["signed"], t.signed.per_layer)
            np.testing.assert_allclose(view.agree_source.data["abs"], m.per_layer)


def test_until_the_reader_picks_one_the_line_follows_the_sets_best(data):
    """The best over all images (or the class's), not each image's own: the line keeps its proxy across images."""
    sel = Selection()
    view = HeadImportanceView(data, sel)
    image = next(i for i in range(data.images) if data.valid[i] and best(data, i) != best(data))
    sel.image = image
    view.update({"image"})
    assert view.proxy_select.value == best(data) and view.chosen is None
    cls = int(data.label[image])
    sel.cls = cls
    view.update({"cls"})
    assert view.proxy_select.value == best(data, None, cls)
    other = next(p for p in PROXIES if p != best(data, None, cls))
    view.proxy_select.value = other  # the reader's pick, as the page sends it: it stays
    assert view.chosen == other
    sel.param.update(image=None, cls=None)
    view.update({"image", "cls"})
    assert view.proxy_select.value == other and PROXY_LABELS[other] in view.proxy_axis.axis_label


def test_direct_vs_total_scatter_is_the_store_and_a_tap_selects_the_head(data, ds):
    sel = Selection()
    view = DirectTotalView(data, sel)
    n = len(ds["valid"])
    direct, total = (ds[v].values.reshape(n, -1) for v in ("direct_effect", "total_effect"))
    sel.image = 6
    view.update({"image"})
    src = view.source.data
    np.testing.assert_allclose(src["x"], direct[6], rtol=1e-6)
    np.testing.assert_allclose(src["y"], total[6], rtol=1e-6)
    np.testing.assert_allclose(src["indirect"], total[6] - direct[6], rtol=1e-5, atol=1e-6)
    assert view.figure.title.text.endswith("image 6")
    assert (view.figure.x_range.start, view.figure.x_range.end) == (view.figure.y_range.start, view.figure.y_range.end)
    k = int(np.argmax(np.abs(total[6] - direct[6])))  # the head acting most through later layers
    view.figure._trigger_event(Tap(view.figure, x=float(direct[6, k]), y=float(total[6, k])))  # what a click sends
    assert (sel.layer, sel.head) == divmod(k, data.heads)
    view.update({"layer", "head"})
    assert view.ring.data == {"x": [pytest.approx(direct[6, k])], "y": [pytest.approx(total[6, k])]}
    sel.image = None
    view.update({"image"})
    np.testing.assert_allclose(src["y"], total[ds["valid"].values].mean(0), rtol=1e-5)


def test_an_older_store_keeps_the_gradient_and_says_what_is_missing(old):
    sel = Selection()
    view = HeadImportanceView(old, sel)
    assert list(view.proxy_select.options.values()) == ["gradient"] and view.proxy_select.disabled
    assert "other proxies" in view.proxy_text.text and "rebuild" in view.proxy_text.text
    assert view.agreement.title.text.startswith("ρ(proxy, ΔCE)")  # ranked against whole-head ΔCE, as before
    np.testing.assert_allclose(view.source.data["proxy"], old.grad_importance[old.valid].mean(0).reshape(-1),
                               rtol=1e-5)
    effects = DirectTotalView(old, sel)
    assert effects.figure is None and EFFECTS_MISSING.split("`")[0] in effects.note.text
