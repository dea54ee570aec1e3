"""Backbones (no classifier): a store with prob/jsd from a linear probe fitted at build, or without a basis (NaN);
the probe's numbers exact against one timm forward per (layer, head, mode) through the stored probe."""

from __future__ import annotations

import copy
import subprocess

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from cli_helpers import vitscope_here
from conftest import small_vit
from PIL import Image

from vitscope import store, summary
from vitscope.analysis import probe
from vitscope.config import BuildConfig
from vitscope.engine import reference
from vitscope.imagesets.folders import normalise
from vitscope.models import ViTAdapter
from vitscope.vocab import METRICS


def backbone() -> ViTAdapter:
    return small_vit("vit", num_classes=0)


def folders(root, classes=("ant", "bee", "cat"), n: int = 4, seed: int = 0):
    g = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(g.integers(0, 256, (36 + i, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def flat(root, n: int = 6):
    root.mkdir(parents=True)
    g = np.random.default_rng(3)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def build_with(monkeypatch, make, images, out, **kw):
    from vitscope import build as b

    monkeypatch.setattr(b, "load_model", lambda *a, **k: make())
    cfg = BuildConfig(model="timm:vit_tiny_patch16_224", images=str(images), out=out, ae_epochs=1, chunk=4,
                      progress=False, **kw)
    return b.build(cfg), cfg


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    with pytest.MonkeyPatch.context() as mp:
        out, _ = build_with(mp, backbone, folders(tmp / "imgs"), tmp / "p.zarr")
    return out


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nolabel")
    with pytest.MonkeyPatch.context() as mp:
        out, _ = build_with(mp, backbone, flat(tmp / "imgs"), tmp / "n.zarr")
    return out


def stored_inputs(ds) -> torch.Tensor:
    cfg = __import__("json").loads(ds.attrs["data_config"])
    return normalise(ds["thumbnail"].values, cfg["mean"], cfg["std"])


def features(ad: ViTAdapter, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return ad.model(x).numpy()  # num_classes=0: timm's forward gives the pooled feature


def test_probe_store_attrs_and_coefficients(probed):
    ds = store.open_store(probed)
    assert ds.attrs["prob_basis"] == "linear probe" and ds.attrs["probe_feature"].startswith("class token")
    assert 0 <= ds.attrs["probe_cv_accuracy"] <= 1 and ds.attrs["probe_folds"] == 4
    assert ds["probe_coef"].shape == (3, 32) and ds["probe_bias"].shape == (3,)
    assert list(ds["class_name"].values) == ["ant", "bee", "cat"]
    assert np.isfinite(ds["importance"].values).all() and np.isfinite(ds["baseline_prob"].values).all()


def test_probe_equals_a_direct_scikit_learn_fit(probed):
    """The stored map (standardisation folded in) gives scikit-learn's own probabilities on the same features."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ds = store.open_store(probed)
    f = features(backbone(), stored_inputs(ds)).astype(np.float64)
    y = ds["label"].values
    clf = LogisticRegressionCV(Cs=list(probe.CS), cv=StratifiedKFold(4, shuffle=True, random_state=0),
                               max_iter=2000, scoring="accuracy", random_state=0)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", FutureWarning)
        pipe = make_pipeline(StandardScaler(), clf).fit(f, y)
    logits = f @ ds["probe_coef"].values.T.astype(np.float64) + ds["probe_bias"].values
    ours = np.exp(logits - logits.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    np.testing.assert_allclose(ours, pipe.predict_proba(f), atol=1e-4)
    np.testing.assert_allclose(ds["baseline_prob"].values, ours[np.arange(len(y)), y], atol=1e-4)


def test_probe_metrics_are_exact_against_timm_forwards(probed):
    """prob/jsd: one timm forward per (layer, head, mode), features → the stored probe → softmax."""
    ds = store.open_store(probed)
    model = copy.deepcopy(backbone().model)
    head = torch.nn.Linear(32, 3)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(ds["probe_coef"].values))
        head.bias.copy_(torch.as_tensor(ds["probe_bias"].values))
    model.head = head  # timm's forward: pooled feature → head
    ref = ViTAdapter(model, "ref")
    pick = [0, 5]
    x, y = stored_inputs(ds)[pick], torch.as_tensor(ds["label"].values[pick])
    imp, tp, ti = reference.reference_importance(ref, x, y, topk=3)
    torch.testing.assert_close(torch.as_tensor(ds["importance"].values[pick]), imp, atol=2e-5, rtol=0)
    torch.testing.assert_close(torch.as_tensor(ds["topk_prob"].values[pick]), tp, atol=2e-5, rtol=0)


def test_resume_reloads_the_probe_and_gives_the_same_store(probed, tmp_path, monkeypatch):
    import shutil

    copy_ = tmp_path / "p.zarr"
    shutil.copytree(probed, copy_)
    group = zarr.open_group(str(copy_), mode="r+")
    group.attrs["complete"] = False
    zarr.open_array(str(copy_ / "chunk_done"), mode="r+")[-1] = False
    zarr.open_array(str(copy_ / "importance"), mode="r+")[8:] = np.nan

    def refit(*a, **k):
        raise AssertionError("a resumed build must read its probe back, not fit another")

    monkeypatch.setattr(probe, "fit_probe", refit)
    images = xr.open_zarr(str(probed)).attrs["image_source"]
    build_with(monkeypatch, backbone, images, copy_)
    a, b = store.open_store(probed), store.open_store(copy_)
    for name in ("importance", "topk_prob", "probe_coef", "baseline_prob"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_unlabelled_backbone_store_has_nan_class_metrics(unlabelled):
    ds = store.open_store(unlabelled)
    assert ds.attrs["prob_basis"] == "none" and list(ds["class_name"].values) == ["unlabelled"]
    assert "probe_coef" not in ds and ds.attrs["layout_metric"] == "cls_dist"
    imp = ds["importance"].values
    assert np.isnan(imp[..., METRICS.index("prob")]).all() and np.isnan(imp[..., METRICS.index("jsd")]).all()
    assert np.isfinite(imp[..., METRICS.index("cls_dist")]).all()
    assert np.isnan(ds["baseline_prob"].values).all() and (ds["topk_idx"].values == -1).all()
    assert np.isfinite(ds["image_xy"].values).all()  # laid out by cls_dist


def test_unlabelled_feature_metrics_are_exact(unlabelled):
    ds = store.open_store(unlabelled)
    ad = backbone()
    x = stored_inputs(ds)[:2]
    with torch.no_grad():
        model = copy.deepcopy(ad.model)
        model.head = torch.nn.Linear(32, 1)  # any head: the feature metrics do not read it
        imp, _, _ = reference.reference_importance(ViTAdapter(model, "ref"), x, torch.zeros(2, dtype=torch.long))
    feat = [METRICS.index("cls_dist"), METRICS.index("patch_dist")]
    torch.testing.assert_close(torch.as_tensor(ds["importance"].values[:2][..., feat]), imp[..., feat], atol=2e-5,
                               rtol=0)


def test_info_summary_and_app_data_say_the_basis(probed, unlabelled):
    from vitscope.readout.store_data import StoreData
    from vitscope.summary import store_summary

    assert "prob basis: linear probe on the class token" in summary.describe(probed)
    assert "prob basis: none: prob and jsd are NaN" in summary.describe(unlabelled)
    text = store_summary(store.open_store(probed))
    assert "accuracy of its linear probe" in text and "on the images it was fitted on" in text
    assert "cross-validated" in text
    text = store_summary(store.open_store(unlabelled))
    assert "unavailable" in text and "CLS distance" in text and "nan" not in text.lower().split("prob/jsd")[0]
    d = StoreData(unlabelled)
    assert d.prob_basis == "none" and d.metrics_shown == ["cls_dist", "patch_dist"] and d.layout_metric == "cls_dist"
    assert StoreData(probed).metrics_shown == list(METRICS)


def test_app_views_on_backbone_stores(probed, unlabelled):
    from vitscope.app.overview import p_true, top5_html
    from vitscope.readout.store_data import StoreData

    for path in (probed, unlabelled):
        d = StoreData(path)
        html = top5_html(d, 0, 0, 0, 0)
        assert ("no class probabilities" in html) == (d.prob_basis == "none")
        assert ("unavailable" in p_true(d, 0)) == (d.prob_basis == "none")


def test_service_uses_the_stored_probe(probed, unlabelled, monkeypatch):
    from vitscope.service import core

    monkeypatch.setattr(core, "_model", lambda *a: backbone())
    s = core.Service(probed)
    assert s.prob_basis == "linear probe" and s.adapter.num_classes == 3
    got = s.compute({"kind": "prune", "image": 1, "heads": ["1:2"]})
    ds = store.open_store(probed)
    stored = ds["importance"].values[1, 1, 2, 1, METRICS.index("prob")]
    assert "error" not in got and abs(got["prob"] - stored) < 1e-5, got
    n = core.Service(unlabelled)
    got = n.compute({"kind": "prune", "image": 0, "heads": ["0:0"]})
    assert got["error"].startswith("unavailable") and "\n" not in got["error"]
    assert n.compute({"kind": "attention", "image": 0})["attention"].shape[:2] == (3, 4)


def test_cli_info_of_backbone_stores(probed, unlabelled):
    for path, words in ((probed, "linear probe"), (unlabelled, "none")):
        res = vitscope_here("info", path)
        assert res.returncode == 0 and f"prob basis: {words}" in res.stdout, res.stderr


def test_a_checkpoint_without_head_loads_as_a_backbone(tmp_path):
    import timm
    from safetensors.torch import save_file

    from vitscope.models import load_model

    m = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    save_file(m.state_dict(), str(tmp_path / "bb.safetensors"))
    ad = load_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "bb.safetensors")
    assert ad.num_classes == 0


def test_too_few_labels_give_no_basis():
    assert probe.why_no_probe(np.array([0, 0, 0]), 1) == "the images have no labels"
    assert "fewer than 2 images" in probe.why_no_probe(np.array([0, 0, 1]), 2)
    assert probe.why_no_probe(np.array([0, 0, 1, 1]), 2) is None


@pytest.mark.filterwarnings("error::RuntimeWarning")  # e.g. numpy's "All-NaN slice" from a view drawing NaN prob
def test_explorer_serves_backbone_stores(probed, unlabelled, monkeypatch):
    """The app on both kinds: the sidebar names the basis; without one only the feature metrics are offered and
    every view draws, without a warning; the Head Importance View asked for prob says why there is none."""
    from vitscope.app.explorer import Explorer
    from vitscope.app.importance import HeadImportanceView
    from vitscope.readout.selection import Selection
    from vitscope.readout.store_data import StoreData
    from vitscope.service import core

    monkeypatch.setattr(core, "_model", lambda *a: backbone())

    ex = Explorer(probed)
    assert "linear probe" in ex.controls()[0].object and ex.selection.metric == "prob"
    ex = Explorer(unlabelled)
    assert "unavailable" in ex.controls()[0].object
    assert list(ex.metric.options) == ["cls_dist", "patch_dist"] and ex.selection.metric == "cls_dist"
    assert "layout by cls_dist" in ex.overview.figure.title.text
    ex.selection.param.update(image=1, layer=2, head=3)
    assert ex.selection.message == "", ex.selection.message
    view = HeadImportanceView(StoreData(unlabelled), Selection())  # prob, as a selection starts: NaN everywhere
    assert "not in this store" in view.figure.title.text
    assert "no class probabilities" in view.summary.text and "cls_dist, patch_dist" in view.summary.text
    view.sel.param.update(image=2, group=[0, 1, 2])
    view.update()
    assert "no class probabilities" in view.summary.text


def test_a_new_image_on_backbone_stores(probed, unlabelled, monkeypatch):
    """The service's new image: the probe's prediction and numbers; without a basis, NaN class outputs and one
    readable line."""
    from vitscope.cli.ablate import readable
    from vitscope.service import core

    monkeypatch.setattr(core, "_model", lambda *a: backbone())
    image = Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    got = core.Service(probed).new_image(data=_png_bytes(image), name="x.png")
    assert got["top5"][0][0] in ("ant", "bee", "cat") and np.isfinite(got["arrays"]["importance"]).all()
    got = core.Service(unlabelled).new_image(data=_png_bytes(image), name="x.png")
    assert np.isnan(got["arrays"]["importance"][..., 0]).all()
    assert readable(got).startswith("x.png: no class probabilities")
    # placed by the feature metric its images were laid out by, not the missing class one
    assert got["image_xy"] is not None and np.isfinite(got["image_xy"]).all()


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_cli_build_ablate_export_of_a_timm_checkpoint_without_head(tmp_path, capsys):
    """`timm:NAME --checkpoint` without `head.*`: built as a backbone, probed; `ablate` and `export` read the probe.
    `build` and `ablate` in fresh interpreters; `export` through `vitscope.cli.main` in this process (the same code
    and return code, without another interpreter's ~10 s of imports and JIT)."""
    import json

    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(tmp_path / "bb.safetensors"))
    out = tmp_path / "s.zarr"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return vitscope_here(*args)

    res = cli("build", "--model", "timm:test_vit", "--checkpoint", str(tmp_path / "bb.safetensors"), "--images",
              str(folders(tmp_path / "imgs", ("a", "b"), 3)), "--out", str(out), "--ae-epochs", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    ds = store.open_store(out)
    assert ds.attrs["prob_basis"] == "linear probe" and ds["probe_coef"].shape == (2, 64)
    got = cli("ablate", str(out), "--image", "2", "--prune", "3:1", "--json")
    assert got.returncode == 0, got.stderr
    assert abs(json.loads(got.stdout)["prob"] - float(ds["importance"].values[2, 3, 1, 1, 0])) < 1e-5
    from vitscope.cli import main

    capsys.readouterr()
    code = main(["export", str(out), "--image", "0", "--out", str(tmp_path / "snap.html")])
    assert code == 0 and "linear probe" in (tmp_path / "snap.html").read_text(), capsys.readouterr().err


def test_dask_build_of_a_backbone_equals_the_threaded_build(tmp_path):
    """A backbone (a timm checkpoint without head.*) built on a Dask worker, a process of its own: the probe is fitted
    once here, before the chunks, and the worker reads it back from the store for each of the 3 chunks, so the store
    equals the in-process build's (probe, metrics, top-k, maps; one thread here as in the worker, so to the bit)."""
    import timm
    from safetensors.torch import save_file

    from vitscope.build import build

    torch.manual_seed(0)
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(tmp_path / "bb.safetensors"))
    common = dict(model="timm:test_vit", checkpoint=tmp_path / "bb.safetensors", chunk=2, ae_epochs=1,
                  images=str(folders(tmp_path / "imgs", ("a", "b"), 3)), progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both probes fitted on features computed alike, and the workers get 1 thread each
    try:
        threaded = store.open_store(build(BuildConfig(out=tmp_path / "threaded.zarr", **common)))
        dask = store.open_store(build(BuildConfig(out=tmp_path / "dask.zarr", workers=1, **common)))
    finally:
        torch.set_num_threads(threads)
    assert threaded.attrs["prob_basis"] == dask.attrs["prob_basis"] == "linear probe"
    for key in ("probe_cv_accuracy", "probe_C", "probe_folds", "fingerprint", "valid_images"):
        assert threaded.attrs[key] == dask.attrs[key], key
    assert dask["chunk_done"].values.all() and dask.sizes["chunk"] == 3
    for name in ("probe_coef", "probe_bias", "label", "valid", "baseline_prob", "importance", "topk_idx", "topk_prob",
                 "grad_importance", "strength", "cls_attention", "binary_index", "pattern_label", "head_kind"):
        np.testing.assert_array_equal(threaded[name].values, dask[name].values, err_msg=name)
    assert np.isfinite(dask["importance"].sel(metric="prob").values).all()  # the probe's P'[true], not NaN
