"""The store schema through a synthetic store (the script the app benchmark uses)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from vitscope import store, summary

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
    assert "10 listed, 10 analysed" in summary.describe(out)


@pytest.mark.parametrize("shape", [(2, 3, 4), (12, 3, 14)])  # a transformers ViT folder; timm's ViT-Ti/16
def test_servable_synthetic_store_computes_attention_of_its_images(tmp_path, shape):
    """The script's store carries a random-init model of its shape (its weights' hash in the fingerprint, so the
    service's stale-store check passes) and its images as files: the service computes any image's attention."""
    from PIL import Image

    from vitscope.service.core import Service

    layers, heads, grid = shape
    out = synthetic_store.make(tmp_path / "s.zarr", images=5, layers=layers, heads=heads, grid=grid, classes=300,
                               chunk=4, servable=True)
    ds = store.open_store(out)
    assert ds.attrs["model_spec"].startswith("timm:" if grid == 14 else "hf:")
    svc = Service(out)
    for image in (0, 4):
        A = svc.attention(image)
        assert A.shape == (layers, heads, grid * grid + 1, grid * grid + 1)
        np.testing.assert_allclose(A.sum(-1), 1, atol=1e-4)
        path = Path(ds.attrs["image_source"]) / str(ds["image_id"].values[image])
        np.testing.assert_array_equal(np.asarray(Image.open(path)), ds["thumbnail"].values[image])


def test_a_finished_store_is_opened_once_until_it_is_written_again(demo16, tmp_path, monkeypatch):
    """Every reader of a store in a process (the app's data, the service, a comparison) shares one opened dataset,
    each through its own copy; a write that finishes a stage gives the next reader the store as written."""
    import shutil

    from vitscope.readout.store_data import StoreData
    from vitscope.service import Service

    path = tmp_path / "s.zarr"
    shutil.copytree(demo16, path)
    opened, real = [], store.open_dataset

    def counted(*args, fresh=False):  # the consolidated metadata parsed (not an array read afresh, as the probe's)
        opened.extend([] if fresh else [args])
        return real(*args, fresh=fresh)

    monkeypatch.setattr(store, "open_dataset", counted)
    first = store.open_store(path)
    for reader in (store.open_store(path), store.open_store(str(path)), StoreData(path).ds, Service(path).ds):
        assert reader.identical(first)
    assert len(opened) == 1
    for reader in (first, store.open_store(path)):  # a reader's own change reaches no other reader
        reader.attrs["prob_basis"] = "none"
        assert store.open_store(path).attrs["prob_basis"] != "none"
    store.write_global(path, {}, {"note": "written again"})
    assert store.open_store(path).attrs["note"] == "written again" and len(opened) == 2
    store.open_store(path, unfinished=True)  # an unfinished build's reader always reads afresh
    assert len(opened) == 3
