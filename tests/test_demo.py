"""The embedded demo: deterministic images, a disjoint split, and shipped weights that work."""

from __future__ import annotations

import numpy as np
import torch

from vitscope.data import demo
from vitscope.models import load_model


def test_split_is_disjoint_and_fixed():
    train, held_out = demo.split_indices()
    assert len(held_out) == 1000 and len(train) == 797
    assert not set(train) & set(held_out)
    assert np.array_equal(held_out, demo.split_indices()[1])


def test_images_are_deterministic_and_varied():
    a, la = demo.eval_set(40)
    b, lb = demo.eval_set(40)
    assert a.shape == (40, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert len(set(la.tolist())) == 10
    # a fresh training composition differs from the evaluation canvases and from other rounds
    t0, _ = demo.train_batch(0)
    t1, _ = demo.train_batch(1)
    assert not np.array_equal(t0, t1)
    assert a.std() > 30  # clutter and colour, not blank canvases


def test_shipped_weights_classify_held_out_digits():
    images, labels = demo.eval_set(200)
    ad = load_model("demo")
    with torch.no_grad():
        pred = ad.model(demo.to_tensor(images)).argmax(-1).numpy()
    assert (pred == labels).mean() >= 0.85  # README states the full-set figure (≥ 90 %)


def test_cli_demo_builds_then_reuses_its_store(tmp_path):
    from test_models import run_cli

    env = {"VITSCOPE_CACHE": str(tmp_path)}
    out = run_cli("demo", "--limit", "16", "--no-serve", env=env)
    assert out.returncode == 0, out.stderr
    assert "Head importance" in out.stdout and "layer 5" in out.stdout and "mode 5" in out.stdout
    assert "Head kinds" in out.stdout and "none" in out.stdout  # pattern kinds of issue 9 in the summary
    assert "analysing images" in out.stderr and "tSNE layouts" in out.stderr  # progress bars
    assert (tmp_path / "demo-16.zarr").is_dir()
    again = run_cli("demo", "--limit", "16", "--no-serve", env=env)
    assert again.returncode == 0 and "already built" in again.stderr and "analysing images" not in again.stderr
    assert again.stdout == out.stdout


def test_cli_train_demo_writes_loadable_weights(tmp_path):
    from test_models import run_cli

    out = run_cli("train-demo", "--rounds", "1", "--out", str(tmp_path / "w.safetensors"))
    assert out.returncode == 0, out.stderr
    assert "held-out accuracy" in out.stdout
    ad = load_model("demo", checkpoint=tmp_path / "w.safetensors")
    assert ad.num_layers == 6
