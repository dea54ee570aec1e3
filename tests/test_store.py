"""The store schema through a synthetic store (the script the app benchmark uses)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from vitscope import store

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import synthetic_store  # noqa: E402


def test_synthetic_store_round_trip(tmp_path):
    out = synthetic_store.make(tmp_path / "s.zarr", images=10, layers=2, heads=3, grid=4, classes=5, chunk=4)
    ds = store.open_store(out)
    assert ds.sizes["image"] == 10
    assert (ds.sizes["layer"], ds.sizes["head"], ds.sizes["hop"], ds.sizes["cls_token"]) == (2, 3, 4, 33)
    assert store.done_chunks(out).all() and ds.attrs["complete"]
    np.testing.assert_allclose(ds["cls_attention"].values.astype(np.float32).sum(-1), 1, atol=2e-2)
    assert ds["topk_idx"].values.max() < 5 and ds["importance"].sel(mode=0, metric="jsd").values.max() == 0
    assert list(ds["class_name"].values) == [f"class {c}" for c in range(5)]
    assert "10 listed, 10 analysed" in store.describe(out)
