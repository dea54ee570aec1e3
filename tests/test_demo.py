"""The embedded demo: deterministic images, a disjoint split, and shipped weights that work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitscope.imagesets import demo
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
    assert "Head kinds" in out.stdout and "none" in out.stdout  # the pattern kinds in the summary
    assert "analysing images" in out.stderr and "tSNE layouts" in out.stderr  # progress bars
    assert (tmp_path / "demo-16.zarr").is_dir()
    assert_depth_structure(tmp_path / "demo-16.zarr")
    again = run_cli("demo", "--limit", "16", "--no-serve", env=env)
    assert again.returncode == 0 and "already built" in again.stderr and "analysing images" not in again.stderr
    assert again.stdout == out.stdout


def assert_depth_structure(path) -> None:
    """The shipped demo model's store looks like a real ViT's over depth, with margins."""
    from scipy.stats import spearmanr

    from vitscope.store import open_store

    ds = open_store(path)
    dist = ds["attention_distance"].values.mean((0, 2))  # per layer, in patches
    assert spearmanr(np.arange(len(dist)), dist).statistic >= 0.6, dist  # looking further with depth
    kinds = ds["head_kind"].attrs["kinds"]
    early = [kinds[k] for k in ds["head_kind"].values[:2].ravel()]
    assert early.count("positional") >= len(early) // 4, early
    assert [kinds[k] for k in ds["head_kind"].values[-2:].ravel()].count("content") >= 4
    labels = ds["pattern_label"]
    diagonal = list(labels.attrs["patterns"]).index("diagonal")
    assert (labels.values[:, 1] == diagonal).mean() >= 0.5  # layer 1 attends its neighbours
    assert (labels.values[:, 3:] == diagonal).mean() <= 0.1


def test_cli_train_demo_writes_loadable_weights(tmp_path):
    from test_models import run_cli

    out = run_cli("train-demo", "--rounds", "1", "--out", str(tmp_path / "w.safetensors"))
    assert out.returncode == 0, out.stderr
    assert "held-out accuracy" in out.stdout
    ad = load_model("demo", checkpoint=tmp_path / "w.safetensors")
    assert ad.num_layers == 6


def test_cli_train_demo_refuses_bad_input_before_training(tmp_path):
    from test_models import run_cli

    (tmp_path / "file").write_text("")
    bad_out = str(tmp_path / "file" / "w.safetensors")  # under a file: no folder can be made there
    for args, said in ((["--rounds", "0"], "--rounds 0"), (["--out", bad_out], "cannot write")):
        out = run_cli("train-demo", *args)  # one line at once, not after the training
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_locality_penalty_is_the_mean_distance_attended_beyond_the_radius():
    from vitscope.models.loading import build_demo_model
    from vitscope.train_demo import distance_matrix, locality_penalty

    model = build_demo_model()
    d = distance_matrix(model)  # 65 tokens: the class token, then the 8×8 grid row by row
    assert d.shape == (65, 65) and d[1, 1] == 0 and d[1, 2] == 1 and d[1, 10] == 1 and d[1, 64] == 7
    assert d[0, 5] == d[5, 0] == 4  # the class token: half the grid away
    eye = torch.eye(65).expand(2, 4, 65, 65)  # every query attends to itself
    assert float(locality_penalty({0: eye}, d, (1.0,))) == 0
    uniform = torch.full((2, 4, 65, 65), 1 / 65)
    naive = sum(float(d[q].mean()) for q in range(1, 65)) / 64  # each patch query's mean distance, averaged
    assert float(locality_penalty({0: uniform}, d, (0.5,))) == pytest.approx(0.5 * naive, rel=1e-6)
    assert float(locality_penalty({0: uniform}, d, (1.0,), radius=1.0)) == pytest.approx(naive - 1, rel=1e-6)
