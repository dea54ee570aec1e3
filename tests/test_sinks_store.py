"""The sink analysis in a store: a store from small random-init timm models (one with 4 registers) holds the sink
variables with sane ranges and what the analysis functions give; `vitscope info` and the summary print the sinks
section (with the registers' share); a v2 store (without them) still opens and says they are missing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from cli_helpers import vitscope_here
from conftest import images_for, small_vit

from vitscope import store
from vitscope.analysis import binary, consistency, sinks
from vitscope.build import finish_heads, registers
from vitscope.config import BuildConfig
from vitscope.errors import StoreMismatch
from vitscope.per_image import analyse_batch
from vitscope.readout.store_data import StoreData
from vitscope.summary import store_summary
from vitscope.vocab import HEAD_KINDS, SINK_RANKS

IMAGES = 6


def small_store(path, variant: str):
    """A store of IMAGES random images through the build's own per-image analysis and its head step."""
    adapter = small_vit(variant)
    grid = adapter.grid
    lay = store.Shape(images=IMAGES, layers=adapter.num_layers, heads=adapter.num_heads, classes=adapter.num_classes,
                       grid=grid, tokens=adapter.num_tokens, topk=5, latent=4, binary_size=grid**2,
                       binary_ones=binary.top_count(0.05, grid**2), thumb=(8, 8), chunk=IMAGES,
                       registers=registers(adapter))
    attrs = {"model_spec": adapter.spec, "model_class": type(adapter.model).__name__, "num_prefix_tokens":
             adapter.num_prefix, "patch_grid": grid, "image_source": "random", "data_config": "{}", "params": ""}
    store.create(path, lay, {"model": adapter.spec, "weights": "x"}, [f"r{i}" for i in range(IMAGES)],
                 [str(c) for c in range(adapter.num_classes)], attrs)
    x, labels = images_for(adapter, IMAGES), torch.arange(IMAGES) % adapter.num_classes
    arrays = analyse_batch(adapter, x, labels, lay, 0.05, "float32")
    store.write_chunk(path, 0, lay, {**arrays, "label": labels.numpy(), "valid": np.ones(IMAGES, bool)})
    finish_heads(path, BuildConfig(model="x", images="random", out=path, progress=False))
    return adapter, x


@pytest.fixture(scope="module", params=["vit", "registers"])
def built(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "s.zarr"
    adapter, x = small_store(path, request.param)
    return request.param, path, adapter, x


def test_store_holds_the_sink_variables_with_sane_ranges(built):
    variant, path, adapter, x = built
    ds = store.open_store(path)
    n, patches, L = adapter.num_prefix, adapter.grid**2, adapter.num_layers
    assert store.has_sinks(ds) and ds.attrs["vitscope_schema"] == store.SCHEMA_VERSION
    assert list(ds["prefix"].values) == (["cls", "reg0", "reg1", "reg2", "reg3"] if variant == "registers" else ["cls"])
    assert ds.sizes["rank"] == SINK_RANKS and ds.sizes["prefix"] == n
    for name in ("sink_token", "norm_token"):
        t = ds[name].values
        assert ((t >= 0) & (t < patches)).all(), name
        assert all(len(set(row)) == SINK_RANKS for row in t.reshape(-1, SINK_RANKS)), name  # distinct patches
    share = ds["sink_share"].values.astype(np.float64)
    assert (share >= 0).all() and (np.diff(share, axis=-1) <= 1e-3).all()  # most attended first
    # the prefix tokens and the top patches take at most all of the patches' attention
    assert (share.sum(-1) + ds["prefix_share"].values.astype(np.float64).sum(-1) <= 1 + 1e-2).all()
    ratio = ds["norm_ratio"].values.astype(np.float64)
    assert (ratio >= 1 - 1e-3).all() and (np.diff(ratio, axis=-1) <= 1e-2).all()  # above the median, largest first
    freq = ds["sink_frequency"].values
    assert ((freq > 0) & (freq <= 1)).all() and (np.diff(freq, axis=-1) <= 0).all()
    assert ds["sink_tokens"].shape == (L, SINK_RANKS) and ds["norm_tokens"].dtype == np.int16
    hs = ds["head_sink_share"].values
    assert ((hs > 0) & (hs <= 1)).all()
    # what the analysis functions give for these images
    from vitscope import engine

    res = engine.run(adapter, x, modes=(), attention="all")
    a = res.attention.view(IMAGES, L, adapter.num_heads, adapter.num_tokens, adapter.num_tokens)
    got = sinks.image_sinks(a, res.token_norm, n)
    np.testing.assert_array_equal(ds["sink_token"].values, got["sink_token"].numpy())
    np.testing.assert_allclose(ds["prefix_share"].values, got["prefix_share"].numpy(), rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(ds["norm_ratio"].values, got["norm_ratio"].numpy(), rtol=2e-3)
    tokens, frequency = sinks.frequent_tokens(got["sink_token"].numpy(), patches)
    np.testing.assert_array_equal(ds["sink_tokens"].values, tokens)
    np.testing.assert_allclose(ds["sink_frequency"].values, frequency)
    index = ds["binary_index"].values
    share, _ = sinks.head_sink(index, patches)
    kinds = sinks.sink_kinds(consistency.head_kinds(consistency.head_consistency(index, patches)), share)
    np.testing.assert_array_equal(ds["head_kind"].values, kinds)
    assert ds["head_kind"].attrs["kinds"] == list(HEAD_KINDS)


def test_info_and_summary_print_the_sinks_section(built):
    variant, path, adapter, _ = built
    res = vitscope_here("info", path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "sinks: Sink heads" in out and "most attended patches" in out and "high-norm patches" in out
    ds = store.open_store(path)
    grid = adapter.grid
    for layer in range(adapter.num_layers):  # each layer's most frequent sink patch, as (row,col) with its share
        t, f = int(ds["sink_tokens"].values[layer, 0]), float(ds["sink_frequency"].values[layer, 0])
        assert f"({t // grid},{t % grid}) {f:.0%}" in out
    summary = store_summary(ds)
    assert "Attention sinks per layer" in summary
    # the registers' share of the patches' attention, per layer (mean over images)
    header = next(line for line in summary.splitlines() if line.strip().startswith("layer  most attended"))
    assert ("registers" in header) == (variant == "registers")
    if variant == "registers":
        regs = ds["prefix_share"].values[..., 1:].astype(np.float64).sum(-1).mean(0)  # [L]
        rows = [line for line in summary.splitlines() if line.startswith("  ") and "×" in line][-adapter.num_layers:]
        for layer, line in enumerate(rows):
            assert f"{regs[layer]:.1%}" in line, (layer, line)


def test_summary_selects_by_label(built):
    """The summary reads modes and metrics by their labels and layers, heads, ranks and prefix tokens by their dims'
    names: the same store with its axes reordered gives the same text."""
    ds = store.open_store(built[1])
    shuffled = ds.isel(mode=[3, 0, 5, 1, 4, 2], metric=[2, 0, 3, 1]).transpose("image", "head", "layer", ...)
    assert store_summary(shuffled) == store_summary(ds)


def test_a_v2_store_opens_and_says_the_sinks_are_missing(built, tmp_path):
    """A store written before v3: no sink variables, schema 2. It opens, `info` and the summary say the sinks are
    missing, and a build refuses to resume it (its fingerprint names schema 2)."""
    import shutil

    _, path, _, _ = built
    old = tmp_path / "v2.zarr"
    shutil.copytree(path, old)
    for name in (*store.SINK_VARIABLES, "prefix", "input_map", "input_method"):  # what v3 and v4 added
        shutil.rmtree(old / name)
    group = zarr.open_group(str(old), mode="r+")
    fingerprint = {**json.loads(group.attrs["fingerprint"]), "schema": 2}
    group.attrs.update(vitscope_schema=2, fingerprint=json.dumps(fingerprint))
    zarr.consolidate_metadata(str(old))
    with pytest.raises(StoreMismatch, match="schema"):  # what a build of this vitscope checks before resuming
        store.check(old, {**fingerprint, "schema": store.SCHEMA_VERSION})
    ds = store.open_store(old)
    assert not store.has_sinks(ds)
    assert not StoreData(old).has_input_maps and StoreData(old).input_maps(0) is None
    assert "Attention sinks: not in this store" in store_summary(ds)
    res = vitscope_here("info", old)
    assert res.returncode == 0, res.stderr
    assert f"sinks: {store.SINKS_MISSING}" in res.stdout and "sink_share" not in res.stdout
    assert isinstance(xr.open_zarr(str(old)), xr.Dataset)
