"""`vitscope build` options that no other test types: `--labels FILE.csv` over a flat folder of images, and
`--scheduler ADDRESS` on a Dask scheduler started here on 127.0.0.1. Both through `vitscope.cli.main`, checked against
the store (xarray) and against the model's own forward."""

from __future__ import annotations

import csv

import numpy as np
import torch
import xarray as xr
from PIL import Image

from vitscope.cli import main
from vitscope.service import Service
from vitscope.store import open_store


def test_labels_csv_over_a_flat_folder(tmp_path, capsys):
    """A flat folder of small RGB images (PNG and JPEG, of other sizes than the model's input) with class names in a
    CSV listed out of file order: the store has the CSV's images in its order, each with its CSV class, and P[true]
    is the model's probability of that class."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "flat"
    folder.mkdir()
    files = []
    for i in range(6):
        name = f"pic{i}.{'jpg' if i % 3 == 0 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 52, 3), dtype=np.uint8)).save(folder / name)
        files.append(name)
    rows = [(files[i], name) for i, name in zip([4, 0, 5, 2, 1, 3], ["zebra", "cat", "cat", "ant", "zebra", "cat"],
                                                  strict=True)]
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *rows])
    out = tmp_path / "flat.zarr"
    code = main(["build", "--model", "demo", "--images", str(folder), "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(out), "--chunk-size", "4", "--ae-epochs", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith(f"store ready: {out}")

    ds = open_store(out)
    names = [str(c) for c in ds["class_name"].values]
    assert [str(i) for i in ds["image_id"].values] == [f for f, _ in rows]
    assert [names[k] for k in ds["label"].values] == [label for _, label in rows]
    assert names[:3] == ["ant", "cat", "zebra"]  # the CSV's names, sorted onto the model's first outputs
    assert ds["valid"].values.all()
    svc = Service(out)
    with torch.no_grad():
        probs = svc.adapter.model(svc.inputs(range(len(rows)))).float().softmax(-1).numpy()
    want = [probs[i, names.index(label)] for i, (_, label) in enumerate(rows)]
    np.testing.assert_allclose(ds["baseline_prob"].values, want, atol=1e-5)


def assert_same_store(a, b) -> None:
    da, db = xr.open_zarr(str(a)), xr.open_zarr(str(b))
    assert set(da.data_vars) == set(db.data_vars)
    for name in da.data_vars:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
    assert da.attrs == db.attrs


def test_scheduler_builds_the_same_store_on_the_cluster(demo16, tmp_path, capsys):
    """`--scheduler tcp://127.0.0.1:PORT`: a scheduler and its one worker started here (in this process, so that
    the worker computes with the same torch threads as the single-process build it is compared with); the chunks
    and the maps' encoding run there, and the store is demo16's to the bit."""
    from distributed import LocalCluster

    out = tmp_path / "scheduled.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        code = main(["build", "--model", "demo", "--images", "demo", "--limit", "16", "--chunk-size", "8",
                     "--ae-epochs", "1", "--scheduler", address, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 0, err
        assert cluster.scheduler.task_prefixes, "no task reached the scheduler"
    assert "analysing images (1 Dask workers)" in err and "encoding maps, 1 Dask workers" in err
    assert_same_store(demo16, out)

