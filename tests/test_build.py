"""`vitscope build` end to end: schema, consistency with the engine, resume after a kill, Dask, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from PIL import Image
from proc_helpers import wait_for_line

from vitscope import engine, store, summary
from vitscope.analysis import binary, cls, consistency, patterns, strength
from vitscope.errors import VitscopeError
from vitscope.imagesets import demo
from vitscope.models import load_model
from vitscope.vocab import BASE_PATTERNS, HEAD_KINDS, METRICS, MODES, PATTERNS

# --layout-points: the head layouts (576 points) are fitted on 300 and the rest placed by the transform
ARGS = ["--model", "demo", "--images", "demo", "--layout-points", "300", "--limit", "24", "--chunk-size", "8",
        "--ae-epochs", "2"]
# One thread everywhere, as in the Dask workers: float results then agree to the bit, so even the
# tSNE layouts (chaotic in their input) can be compared exactly.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def vitscope(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitscope.cli", *args], capture_output=True, text=True,
                          timeout=600, env=ENV)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "demo.zarr"
    res = vitscope("build", *ARGS, "--out", str(out), "--store-attention")
    assert res.returncode == 0, res.stderr
    return out


def assert_same_store(a, b):
    da, db = xr.open_zarr(str(a)), xr.open_zarr(str(b))
    assert set(da.data_vars) == set(db.data_vars)
    for name in da.data_vars:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
    assert da.attrs == db.attrs


def test_store_schema_and_consistency(reference):
    ds = store.open_store(reference)
    assert ds.sizes["image"] == 24 and ds.sizes["layer"] == 6 and ds.sizes["head"] == 4
    assert ds.sizes["hop"] == 8 and ds.sizes["cls_token"] == 2 * 64 + 1 and ds.sizes["mode"] == len(MODES)
    assert list(ds["metric"].values) == list(METRICS) and list(ds["mode"].values) == list(MODES)
    assert ds["valid"].all() and ds.attrs["class_names"] == [str(i) for i in range(10)]
    assert ds["cls_attention"].dtype == np.float16 and ds["thumbnail"].dtype == np.uint8
    for name in ("pattern_latent", "image_xy", "head_xy_cls", "head_xy_patch"):
        assert np.isfinite(ds[name].values).all(), name
    # the stored numbers are what the engine and the analysis functions give for these images
    images, labels = demo.eval_set(24)
    ad = load_model("demo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the build ran (ENV): float32 to the bit, so the stored float16 attention is exact
    try:
        r = engine.run(ad, demo.to_tensor(images[8:12]), torch.from_numpy(labels[8:12]), attention="all")
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(ds["importance"].values[8:12], r.importance.numpy(), atol=1e-5)
    assert np.array_equal(ds["thumbnail"].values[:4], images[:4])
    a = r.attention.view(4, 6, 4, 65, 65)
    np.testing.assert_allclose(ds["attention"].values[8:12], a.half().numpy())
    patch = a[..., 1:, 1:]
    np.testing.assert_allclose(ds["strength"].values[8:12], strength.attention_strength(patch, 8).numpy(), atol=1e-6)
    np.testing.assert_array_equal(ds["cls_attention"].values[8:12], cls.cls_attention_vector(a, 1).half().numpy())
    np.testing.assert_allclose(ds["baseline_prob"].values[8:12], r.probs.gather(1, r.labels[:, None])[:, 0].numpy(),
                               atol=1e-6)


def test_store_keeps_labels_full_maps_and_head_kinds(reference):
    ds = store.open_store(reference)
    assert list(ds["pattern"].values) == list(BASE_PATTERNS) and ds["pattern_label"].attrs["patterns"] == list(PATTERNS)
    assert ds["head_kind"].attrs["kinds"] == list(HEAD_KINDS)
    images, labels = demo.eval_set(8)
    r = engine.run(load_model("demo"), demo.to_tensor(images), torch.from_numpy(labels), modes=(), attention="all")
    maps = binary.binarise(r.attention.view(8, 6, 4, 65, 65)[..., 1:, 1:], 0.01)  # [8, L, H, 64, 64]
    # the maps are kept at full resolution (64 × 64 for the demo's 8 × 8 grid), as the 1s' indices
    assert ds.sizes["one"] == 41 and ds["binary_index"].dtype == np.uint16
    assert torch.equal(binary.unpack_binary(ds["binary_index"].values[:8], 64), maps)
    first, second = patterns.labels_from_scores(patterns.pattern_scores(maps, 8))
    np.testing.assert_array_equal(ds["pattern_label"].values[:8], first.numpy())
    np.testing.assert_array_equal(ds["pattern_second"].values[:8], second.numpy())
    # head consistency over all the store's images, and the kinds cut from it
    index = ds["binary_index"].values
    np.testing.assert_allclose(ds["head_consistency"].values, consistency.head_consistency(index, 64))
    np.testing.assert_array_equal(ds["head_kind"].values, consistency.head_kinds(ds["head_consistency"].values))
    assert np.isfinite(ds["head_consistency"].values).all()


# `vitscope build` that, once its first chunk is written and marked done, says so and waits to be killed.
HELD_AFTER_FIRST_CHUNK = """
import sys, threading
from vitscope import store
from vitscope.cli import main
write = store.write_chunk
def written(*args, **kwargs):
    write(*args, **kwargs)
    print("chunk written", flush=True)
    threading.Event().wait()
store.write_chunk = written
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_kill_gives_the_same_store(reference, tmp_path):
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-c", HELD_AFTER_FIRST_CHUNK, "build", *ARGS, "--out", str(out), "--store-attention"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=ENV)
    wait_for_line(proc, "chunk written", timeout=300)
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # killed mid-build, not ended
    assert store.done_chunks(out).tolist() == [True, False, False]  # one chunk of three done
    with pytest.raises(VitscopeError, match="unfinished build"):
        store.open_store(out)
    res = vitscope("build", *ARGS, "--out", str(out), "--store-attention")
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stderr and "1 of 3 chunks already done" in res.stderr
    assert_same_store(reference, out)


def test_other_inputs_are_refused_then_overwritten(reference, tmp_path):
    out = tmp_path / "other.zarr"
    shutil.copytree(reference, out)  # a store of other inputs (24 images, with attention); `reference` stays as it is
    other = ["build", *ARGS[:-4], "--limit", "16", "--chunk-size", "8", "--ae-epochs", "1", "--out", str(out)]
    res = vitscope(*other)
    assert res.returncode == 2 and "Refusing to mix" in res.stderr and "Traceback" not in res.stderr
    assert "attention" in store.open_store(out) and store.open_store(out).sizes["image"] == 24  # untouched
    res = vitscope(*other, "--overwrite")
    assert res.returncode == 0, res.stderr
    ds = store.open_store(out)  # the new store: 16 images, no attention, no chunk of the old one left
    assert ds.sizes["image"] == 16 and "attention" not in ds and store.done_chunks(out).tolist() == [True, True]
    assert ds["valid"].all() and np.isfinite(ds["image_xy"].values).all()
    res = vitscope(*other)  # its fingerprint is the new inputs'
    assert res.returncode == 0 and "already built" in res.stderr


def test_bad_stores_give_one_line(tmp_path):
    with pytest.raises(VitscopeError, match="store not found"):
        store.open_store(tmp_path / "none.zarr")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w", zarr_format=2)
    with pytest.raises(VitscopeError, match="not a vitscope store"):
        store.open_store(tmp_path / "foreign.zarr")
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(VitscopeError):
        store.open_store(tmp_path / "file.zarr")
    g = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=2)
    g.attrs["vitscope_schema"] = 0
    with pytest.raises(VitscopeError, match="schema v0, older"):
        store.open_store(tmp_path / "old.zarr")


def test_info_describes_a_store(reference):
    res = vitscope("info", str(reference))
    assert res.returncode == 0, res.stderr
    assert "24 listed, 24 analysed" in res.stdout and "6 layers × 4 heads" in res.stdout
    assert "head_xy_patch" in res.stdout and f"schema: v{store.SCHEMA_VERSION}" in res.stdout
    kinds = store.open_store(reference)["head_kind"].values  # [6, 4]
    letters = "  ".join("".join(HEAD_KINDS[k][0].upper() for k in layer) for layer in kinds)
    assert f"by layer: {letters}" in res.stdout
    assert all(f"{name} {int((kinds == k).sum())}" in res.stdout for k, name in enumerate(HEAD_KINDS))


def test_folder_with_bad_files(tmp_path):
    images, labels = demo.eval_set(6)
    for i, (im, lab) in enumerate(zip(images, labels, strict=True)):
        (tmp_path / "imgs" / str(lab)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "imgs" / str(lab) / f"{i}.png")
    (tmp_path / "imgs" / str(labels[0]) / "broken.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "imgs" / str(labels[1]) / "empty.jpg").write_bytes(b"")
    out = tmp_path / "f.zarr"
    res = vitscope("build", "--model", "demo", "--images", str(tmp_path / "imgs"), "--out", str(out),
                   "--chunk-size", "4", "--ae-epochs", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("skipped ") >= 2 and "2 unreadable images skipped" in res.stderr  # even when quiet
    assert "analysing images" not in res.stderr and "it/s" not in res.stderr and "tSNE" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 3 and res.stdout.startswith("store ready")
    ds = store.open_store(out)
    assert ds.sizes["image"] == 8 and int(ds["valid"].sum()) == 6
    bad = ~ds["valid"].values
    assert {i.split("/")[-1] for i in ds["image_id"].values[bad]} == {"broken.png", "empty.jpg"}
    assert np.isnan(ds["importance"].values[bad]).all() and np.isfinite(ds["image_xy"].values[~bad]).all()


def test_dask_cluster_matches_single_process(reference, tmp_path):
    out = tmp_path / "dask.zarr"
    res = vitscope("build", *ARGS, "--out", str(out), "--store-attention", "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "analysing images (2 Dask workers)" in res.stderr
    # the layouts' transform and the autoencoder's encoding ran on the workers too, and changed nothing
    for stage in ("placing the rest of head_xy_cls", "encoding maps", "placing the rest of head_xy_patch"):
        assert f"{stage}, 2 Dask workers" in res.stderr, stage
    assert_same_store(reference, out)
    fits = store.open_store(out).attrs["layout_fits"]
    assert fits["head_xy_cls"]["sample"] == 300 and fits["head_xy_cls"]["points"] == 576


def test_service_recomputes_one_images_attention(reference):
    from vitscope.service import Service

    svc = Service(reference)
    ds = store.open_store(reference)
    a = svc.attention(5)
    assert a.shape == (6, 4, 65, 65)
    np.testing.assert_allclose(a, ds["attention"].values[5].astype(np.float32), atol=1e-3)  # stored as float16
    r = engine.run(svc.adapter, svc.input(5), torch.tensor([int(ds["label"][5])]), layers=[2])
    np.testing.assert_allclose(r.importance[0, 2].numpy(), ds["importance"].values[5, 2], atol=1e-5)
    with pytest.raises(VitscopeError, match="image 24 out of range.*0..23"):
        svc.attention(24)


# -- the store opens before its layouts (vitscope demo serves it then) -----------------------------------

SMALL = dict(model="demo", images="demo", limit=24, chunk=8, ae_epochs=2, layout_points=300, progress=False)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The same small store built here in one go (in-process builds agree with each other to the bit)."""
    from vitscope.build import BuildConfig, build

    return build(BuildConfig(out=tmp_path_factory.mktemp("inproc") / "full.zarr", **SMALL))


def test_layouts_later_opens_the_store_first_and_ends_the_same(in_process, tmp_path, monkeypatch):
    import threading

    from vitscope.analysis import layout
    from vitscope.build import BuildConfig, build
    from vitscope.layouts import LAYOUT_VARIABLES, layouts_status, wait_layouts

    gate, real = threading.Event(), layout.fit_layout

    def gated(*args, **kwargs):
        assert gate.wait(300)
        return real(*args, **kwargs)

    monkeypatch.setattr(layout, "fit_layout", gated)
    out = build(BuildConfig(out=tmp_path / "later.zarr", **SMALL), layouts_later=True)
    ds = store.open_store(out)  # opens while the layouts are computed
    assert ds.attrs["layouts_pending"] == list(LAYOUT_VARIABLES) and layouts_status(out) == "running"
    assert np.isnan(ds["image_xy"].values).all() and np.isnan(ds["pattern_latent"].values).all()
    assert (ds["head_kind"].values >= 0).all() and ds["importance"].notnull().all()
    assert "layouts pending: head_xy_cls, head_xy_patch, image_xy" in summary.describe(out)
    gate.set()
    assert wait_layouts(out, 300) == "done"
    assert store.open_store(out).attrs["layouts_pending"] == []
    assert_same_store(in_process, out)


def test_layouts_left_pending_are_finished_by_the_same_build(in_process, tmp_path, monkeypatch, capsys):
    from vitscope.analysis import layout
    from vitscope.build import BuildConfig, build
    from vitscope.layouts import layouts_status, wait_layouts

    real, calls = layout.fit_layout, []

    def second_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(layout, "fit_layout", second_fails)
    out = build(BuildConfig(out=tmp_path / "pending.zarr", **SMALL), layouts_later=True)
    assert wait_layouts(out, 300) == "failed: killed" == layouts_status(out)
    assert "computing the layouts of" in capsys.readouterr().err
    ds = store.open_store(out)
    assert ds.attrs["layouts_pending"] == ["head_xy_cls", "head_xy_patch"] and ds["image_xy"].notnull().all()
    monkeypatch.setattr(layout, "fit_layout", real)
    build(BuildConfig(out=out, **{**SMALL, "progress": True}))
    assert "computing its layouts (head_xy_cls, head_xy_patch)" in capsys.readouterr().err
    assert_same_store(in_process, out)


def test_layouts_on_workers_in_small_blocks_equal_the_single_process(in_process, tmp_path, monkeypatch, capsys):
    """The layout stage alone, in one process and on 2 Dask workers with the transform and the encoding in blocks
    of one store chunk (8 images): the same store. One torch thread, as on the workers, so that the autoencoder's
    latents (which the patch layout is fitted on) agree to the bit."""
    from dataclasses import replace

    from vitscope import layouts
    from vitscope.build import BuildConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, workers in (("one.zarr", 0), ("workers.zarr", 2)):
            shutil.copytree(in_process, tmp_path / name)
            zarr.open_group(str(tmp_path / name), mode="r+").attrs["layouts_pending"] = list(layouts.LAYOUT_VARIABLES)
            if workers:
                monkeypatch.setattr(layouts, "BLOCK_POINTS", 100)  # the main process cuts the blocks
            layouts.finish_layouts(tmp_path / name, replace(BuildConfig(out=tmp_path / name, **SMALL),
                                                            workers=workers, progress=bool(workers)))
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "placing the rest of head_xy_cls, 2 Dask workers" in err and "encoding maps, 2 Dask workers" in err
    assert_same_store(tmp_path / "one.zarr", tmp_path / "workers.zarr")


def test_progress_moves_per_engine_batch():
    from pathlib import Path

    from vitscope.build import BuildConfig, compute_chunk, open_inputs
    from vitscope.imagesets.folders import Preprocessor

    cfg = BuildConfig(model="demo", images="demo", out=Path("unused"), limit=12, batch_size=5)
    adapter, images = open_inputs(cfg)
    lay = store.Shape(images=12, layers=6, heads=4, classes=10, grid=8, tokens=65, topk=5, latent=16,
                       binary_size=64, binary_ones=binary.top_count(0.01, 64), thumb=(64, 64), chunk=12)
    seen: list[int] = []
    compute_chunk(adapter, images, Preprocessor(adapter.model), lay, cfg, 0, on_batch=seen.append)
    assert seen == [5, 5, 2]


def test_demo_quiet_prints_its_summary_and_no_progress(tmp_path):
    res = subprocess.run([sys.executable, "-m", "vitscope.cli", "demo", "--limit", "8", "--no-serve", "--quiet"],
                         capture_output=True, text=True, timeout=600, env={**ENV, "VITSCOPE_CACHE": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and "Head importance" in res.stdout and (tmp_path / "demo-8.zarr").is_dir()
