"""`vitscope info STORE`'s proxy table: a synthetic store without the head effects (as every store built before them)
says so in one line, and with them added prints what `proxy_table` computes from the same arrays."""

from __future__ import annotations

import numpy as np
import zarr
from app_helpers import drop_effects, make_store
from cli_helpers import vitscope_here

from vitscope.analysis.proxy import proxy_table, summary_lines, table_lines
from vitscope.store import FORMAT, MISSING, open_store
from vitscope.vocab import PROXY_LABELS

EFFECTS = ("total_effect", "direct_effect", "output_norm", "rollout_impact")


def add_effects(path, unreadable: tuple[int, ...]) -> None:
    """The four per-image head arrays, as a build would write them: NaN for an image it could not read."""
    ds = open_store(path)
    n, L, H = ds.sizes["image"], ds.sizes["layer"], ds.sizes["head"]
    rng = np.random.default_rng(0)
    total = rng.normal(0.3, 1, (n, L, H))
    arrays = {"total_effect": total, "direct_effect": total + rng.normal(0, 0.5, (n, L, H)),
              "output_norm": np.abs(total),  # ranks exactly as |total|: the verdict is this one
              "rollout_impact": rng.random((n, L, H))}
    for v in arrays.values():
        v[list(unreadable)] = np.nan
    for k, v in arrays.items():  # zarr itself: xarray's append would replace the store's attributes
        arr = zarr.open_array(str(path / k), mode="w", shape=v.shape, dtype="float32", fill_value=np.nan, **FORMAT)
        arr[...] = v.astype(np.float32)
        arr.attrs["_ARRAY_DIMENSIONS"] = ["image", "layer", "head"]
    zarr.consolidate_metadata(str(path))


def section(lines: list[str], name: str) -> list[str]:
    """How `info` prints a section: its name right-aligned before the first line, the rest indented to match."""
    head = f"{name:>13}: "
    return [(head if i == 0 else " " * len(head)) + line for i, line in enumerate(lines)]


def test_info_prints_the_proxy_table_or_says_the_effects_are_missing(tmp_path):
    path = drop_effects(make_store(tmp_path / "s.zarr", 16, 2, 3, 4, 3, unreadable=(1,)))
    ds = open_store(path)
    valid = ds["valid"].values.astype(bool)
    grad_lines = summary_lines(ds["importance"].values, ds["baseline_prob"].values, ds["grad_importance"].values,
                               valid)
    out = vitscope_here("info", path)
    assert out.returncode == 0, out.stderr
    assert "\n".join(section(grad_lines, "proxy")) in out.stdout  # today's gradient lines stay
    assert section([MISSING.format("head effects")], "proxies")[0] in out.stdout.splitlines()
    assert "closest to exact pruning" not in out.stdout

    add_effects(path, unreadable=(1,))
    ds = open_store(path)
    arrays = {k: ds[k].values for k in (*EFFECTS, "grad_importance", "cls_attention")}
    out = vitscope_here("info", path)
    assert out.returncode == 0, out.stderr
    lines = table_lines(proxy_table(arrays, valid))
    assert len(lines) == 7 and lines[-1] == (f"for this model, {PROXY_LABELS['output_norm']} ranks heads closest to "
                                             "exact pruning")
    assert "\n".join(section(lines, "proxies")) in out.stdout
    assert "\n".join(section(grad_lines, "proxy")) in out.stdout and "not in this store (built by" not in out.stdout

    label = ds["label"].values
    cls = int(label[valid][0])
    out = vitscope_here("info", path, "--class", str(ds["class_name"].values[cls]))
    assert out.returncode == 0, out.stderr
    mine = table_lines(proxy_table(arrays, valid, label == cls))
    assert mine != lines and "\n".join(section(mine, "proxies (class)")) in out.stdout
