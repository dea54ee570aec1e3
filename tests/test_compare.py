"""`vitscope compare`: two stores of the same images, layer by layer, and their heads paired by behaviour.

Tiny stores of random-init ViTs (the demo architecture, 2 or 4 layers) over six generated images and one broken
file: the JSON against numbers computed here from the stores' own variables, the head pairing on a model against
itself and against a copy with two heads swapped, relative depth, and every bad input as one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import xarray as xr
import zarr
from conftest import make_peaky
from PIL import Image
from safetensors.torch import save_file

from vitscope import store
from vitscope.build import BuildConfig, build
from vitscope.cli import main
from vitscope.compare import (
    align_layers,
    compare,
    format_report,
    good_threshold,
    head_features,
    head_similarity,
    matched_images,
)
from vitscope.errors import VitscopeError
from vitscope.imagesets import demo
from vitscope.models import loading
from vitscope.vocab import GOOD_PARTNER, PATTERNS, WHOLE_HEAD

SWAPPED = (1, 0, 2)  # layer 1: heads 0 and 2 trade places


def demo_arch(depth: int, heads: int, seed: int) -> dict[str, torch.Tensor]:
    """A random-init state dict of the demo architecture at another depth and head count (peaky attention)."""
    model = timm.create_model(loading.DEMO_ARCH, pretrained=False,
                              **{**loading.DEMO_KWARGS, "depth": depth, "num_heads": heads})
    return {k: v.clone().contiguous() for k, v in make_peaky(model, seed).state_dict().items()}


def swap_heads(state: dict[str, torch.Tensor], layer: int, h1: int, h2: int, heads: int) -> dict[str, torch.Tensor]:
    """The same model with two heads of a layer trading places: their rows of q, k and v (weights and biases) and
    their columns of the output projection. The output is unchanged; head h1 now computes what h2 did."""
    out = {k: v.clone() for k, v in state.items()}
    qkv_w, qkv_b = f"blocks.{layer}.attn.qkv.weight", f"blocks.{layer}.attn.qkv.bias"
    proj = f"blocks.{layer}.attn.proj.weight"
    dim = state[proj].shape[0]
    d = dim // heads
    order = np.arange(dim)
    order[h1 * d:(h1 + 1) * d], order[h2 * d:(h2 + 1) * d] = np.arange(h2 * d, (h2 + 1) * d), np.arange(h1 * d,
                                                                                                      (h1 + 1) * d)
    rows = torch.from_numpy(np.concatenate([order + k * dim for k in range(3)]))
    out[qkv_w] = state[qkv_w][rows].contiguous()
    out[qkv_b] = state[qkv_b][rows].contiguous()
    out[proj] = state[proj][:, torch.from_numpy(order)].contiguous()
    return out


def build_store(tmp, name: str, state: dict, images, depth: int, heads: int) -> xr.Dataset:
    ckpt = tmp / f"{name}.safetensors"
    save_file(state, str(ckpt))
    out = tmp / f"{name}.zarr"
    with pytest.MonkeyPatch.context() as mp:  # `demo` builds loading.DEMO_KWARGS: here at this depth
        mp.setitem(loading.DEMO_KWARGS, "depth", depth)
        mp.setitem(loading.DEMO_KWARGS, "num_heads", heads)
        build(BuildConfig(model="demo", checkpoint=ckpt, images=str(images), out=out, chunk=8, ae_epochs=0,
                          progress=False))
    return out


def demo_images(root: Path, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """n demo eval images written as class sub-folders of `root`; returns them and their labels."""
    pics, labels = demo.eval_set(n)
    for i, (im, lab) in enumerate(zip(pics, labels, strict=True)):
        (root / str(lab)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / str(lab) / f"{i}.png")
    return pics, labels


@pytest.fixture(scope="module")
def stores(compare_stores, tmp_path_factory) -> dict:
    """conftest's a, swap and small (six images and one unreadable file), and `other`: small's model over another
    image folder."""
    tmp = tmp_path_factory.mktemp("compare")
    pics, _ = demo.eval_set(1)
    (tmp / "other" / "0").mkdir(parents=True)
    Image.fromarray(pics[0]).save(tmp / "other" / "0" / "0.png")
    return {**compare_stores, "other": build_store(tmp, "other", demo_arch(2, 2, seed=1), tmp / "other", 2, 2),
            "tmp": tmp}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["compare", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def pair_map(result: dict) -> dict[str, str]:
    return {p["a"]["name"]: p["b"]["name"] for p in result["heads"]["pairs"]}


def test_a_model_against_itself_pairs_every_head_with_itself_at_1(stores):
    ds = store.open_store(stores["a"])
    r = compare(ds, ds)
    assert r["images"] == 6 and r["top1_agreement"] == 1.0
    pairs = r["heads"]["pairs"]
    assert len(pairs) == 16 and all(p["a"] == p["b"] for p in pairs)
    np.testing.assert_allclose([p["similarity"] for p in pairs], 1.0, atol=1e-9)
    assert all(p["good"] and not (p["kind_changed"] or p["pattern_changed"] or p["importance_changed"]) for p in pairs)
    assert r["heads"]["unique"] == {"a": [], "b": []}
    assert r["heads"]["components"] == ["distance", "strength", "patterns", "cls"]
    # every similarity term is 1 for the same head, and below 1 somewhere between different heads
    f = head_features(ds, np.flatnonzero(ds["valid"].values))
    sims = head_similarity(f, f)
    for name in ("distance", "strength", "patterns", "cls", "similarity"):
        np.testing.assert_allclose(np.diag(sims[name]), 1.0, atol=1e-9, err_msg=name)
        assert (sims[name] <= 1).all() and (sims[name] >= 0).all()
    assert (sims["similarity"][~np.eye(16, dtype=bool)] < 0.999).all()


def test_two_swapped_heads_pair_crosswise(stores):
    layer, h1, h2 = SWAPPED
    r = compare(store.open_store(stores["a"]), store.open_store(stores["swap"]))
    expected = {f"L{i}H{h}": f"L{i}H{h}" for i in range(4) for h in range(4)}
    expected[f"L{layer}H{h1}"], expected[f"L{layer}H{h2}"] = f"L{layer}H{h2}", f"L{layer}H{h1}"
    assert pair_map(r) == expected
    # the output is the same model's: every pair behaves alike (up to float rounding in the swapped layer's sums)
    assert min(p["similarity"] for p in r["heads"]["pairs"]) > 0.999
    assert r["top1_agreement"] == 1.0 and r["heads"]["unique"] == {"a": [], "b": []}
    assert not any(p["moved"] for p in r["heads"]["pairs"])
    a, b = (store.open_store(stores[k]) for k in ("a", "swap"))
    np.testing.assert_allclose(a["attention_distance"].isel(layer=layer, head=h1).values,
                               b["attention_distance"].isel(layer=layer, head=h2).values, rtol=1e-4)


def valid_of(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(image=np.flatnonzero(ds["valid"].values))


def test_json_is_what_the_stores_hold(stores, capsys):
    """`compare --json` of a 4-layer × 4-head model and a 2-layer × 2-head one against numbers computed here."""
    code, out, err = run(capsys, stores["a"], stores["small"], "--json")
    assert code == 0, err
    r = json.loads(out)
    a, b = (valid_of(store.open_store(stores[k])) for k in ("a", "small"))
    assert list(a["image_id"].values) == list(b["image_id"].values) and a.sizes["image"] == 6
    assert r["images"] == 6 and r["images_listed"] == [7, 7]
    top1 = [ds["topk_idx"].sel(mode=0).isel(layer=0, head=0, k=0).values for ds in (a, b)]
    assert r["top1_agreement"] == pytest.approx(np.mean(top1[0] == top1[1]))
    assert r["layer_alignment"]["relative_depth"] and r["layer_alignment"]["b_layer"] == [0, 0, 1, 1]
    assert len(r["layers"]) == 4
    for row in r["layers"]:
        at = (row["layer"], row["layer_b"])
        assert at[1] == round(at[0] * (2 - 1) / (4 - 1) + 1e-9)
        for key, var in (("distance", "attention_distance"), ("entropy", "strength_entropy")):
            want = [float(ds[var].isel(layer=k).astype("float64").mean()) for ds, k in zip((a, b), at, strict=True)]
            assert row[key] == pytest.approx(want, rel=1e-6), key
        imp = [ds["importance"].isel(layer=k).astype("float64") for ds, k in zip((a, b), at, strict=True)]
        drop = [float((x.sel(mode=0, metric="prob") - x.sel(mode=WHOLE_HEAD, metric="prob")).mean()) for x in imp]
        assert row["drop"] == pytest.approx(drop, rel=1e-6)
        for p in PATTERNS:
            want = [float((ds["pattern_label"].isel(layer=k) == PATTERNS.index(p)).mean())
                    for ds, k in zip((a, b), at, strict=True)]
            assert row["patterns"][p] == pytest.approx(want), p
        for name, counts in row["kinds"].items():
            names = [ds["head_kind"].attrs["kinds"] for ds in (a, b)]
            assert counts == [int((ds["head_kind"].isel(layer=k).values == n.index(name)).sum())
                              for ds, k, n in zip((a, b), at, names, strict=True)]
        assert sum(row["kinds"].values(), [])  # every head is counted somewhere
        assert [sum(c[0] for c in row["kinds"].values()), sum(c[1] for c in row["kinds"].values())] == [4, 2]
    # 16 heads against 4: four pairs, twelve heads of A without a partner at all
    heads = r["heads"]
    assert len(heads["pairs"]) == 4 and sum(not u["paired"] for u in heads["unique"]["a"]) == 12
    assert all(p["moved"] == (p["b"]["layer"] != [0, 0, 1, 1][p["a"]["layer"]]) for p in heads["pairs"])
    assert all(u["paired"] for u in heads["unique"]["b"])


def test_report_says_relative_depth(stores, capsys):
    code, out, err = run(capsys, stores["small"], stores["a"])
    assert code == 0, err
    assert "relative depth: layer i of A ↔ layer ⌊i·3/1 + ½⌋ of B" in out
    assert "B's layers 1, 2 not shown" in out and "Roles only in B" in out
    assert align_layers(2, 4) == [0, 3] and align_layers(4, 2) == [0, 0, 1, 1] and align_layers(3, 3) == [0, 1, 2]
    assert align_layers(12, 6) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and align_layers(1, 4) == [3]


def test_a_store_without_probabilities_reports_its_drop_as_missing(stores):
    """A backbone's store without a basis has NaN prob: its drop is None (null in JSON), not a crash."""
    a = store.open_store(stores["a"])
    b = store.open_store(stores["swap"]).load()
    b["importance"] = b["importance"].where(b["metric"] != "prob")
    b.attrs["prob_basis"] = "none"
    r = compare(a, b)
    json.dumps(r, allow_nan=False)
    assert r["top1_agreement"] is None and all(row["drop"][1] is None and row["drop"][0] is not None
                                               for row in r["layers"])
    assert r["heads"]["importance_metric"].startswith("cls_dist")
    assert "n/a" in format_report(r)


def test_images_are_matched_by_id_and_validity(stores):
    a = store.open_store(stores["a"])
    b = store.open_store(stores["small"]).isel(image=[6, 5, 4, 3, 2, 1, 0])  # another order
    ia, ib = matched_images(a, b)
    assert [str(i) for i in a["image_id"].values[ia]] == [str(i) for i in b["image_id"].values[ib]]
    assert len(ia) == 6 and a["valid"].values[ia].all()
    renamed = b.assign_coords(image_id=("image", [f"x/{i}" for i in range(7)]))
    with pytest.raises(VitscopeError, match="no images in common"):
        compare(a, renamed)


def test_bad_input_is_one_line(stores, capsys):
    tmp = stores["tmp"]
    zarr.open_group(str(tmp / "v1.zarr"), mode="w").attrs.update(vitscope_schema=1)
    zarr.open_group(str(tmp / "foreign.zarr"), mode="w")
    cases = {
        "different image sets": (stores["a"], stores["other"]),
        "store not found": (stores["a"], tmp / "missing.zarr"),
        "schema v1": (tmp / "v1.zarr", stores["a"]),
        "not a vitscope store": (stores["a"], tmp / "foreign.zarr"),
    }
    for what, (a, b) in cases.items():
        code, out, err = run(capsys, a, b)
        assert code == 2 and not out, what
        assert len(err.strip().splitlines()) == 1 and what in err and err.startswith("vitscope compare: error:"), err
    code, out, err = run(capsys, stores["a"], stores["a"], "--good", "2")
    assert code == 2 and "--good 2" in err


def test_other_grids_compare_without_the_grid_terms(stores):
    """Models with other patch grids (ViT-S/8 against ViT-S/16 on the same photos) have no common strength hops or
    CLS vectors: their heads are compared by distance and patterns only, and identical heads still score 1."""
    ds = store.open_store(stores["a"])
    f = head_features(ds, np.flatnonzero(ds["valid"].values))
    coarse = type(f)(distance=f.distance, strength=f.strength[..., :4], patterns=f.patterns,
                     cls=f.cls[..., :33], grid=4)
    sims = head_similarity(f, coarse)
    assert "strength" not in sims and "cls" not in sims
    np.testing.assert_allclose(sims["similarity"], (sims["distance"] + sims["patterns"]) / 2)
    np.testing.assert_allclose(np.diag(sims["similarity"]), 1.0, atol=1e-12)


def test_the_good_partner_threshold():
    """0.9 where the pairs are as alike as a model and its perturbed copy; between two different models, only the
    pairs far below the others (under the lower Tukey fence of the paired similarities) lack a good partner."""
    assert good_threshold(np.ones(24)) == (GOOD_PARTNER, 1.0)
    assert good_threshold(np.r_[np.full(20, 0.99), np.full(4, 0.92)])[0] == GOOD_PARTNER
    threshold, fence = good_threshold(np.r_[np.linspace(0.7, 0.85, 20), [0.22, 0.23, 0.25, 0.25]])
    assert threshold == fence and 0.25 < threshold < 0.7


def test_a_sink_paired_with_no_sink_is_a_role_of_one_model(stores):
    """Behaviour alike, roles not: B's L2H1 relabelled a sink head pairs with A's L2H1 at similarity 1, yet it is no
    good partner: B's head is listed as a role of one model (a sink role), A's is not."""
    a = store.open_store(stores["a"])
    kinds = [str(k) for k in a["head_kind"].attrs.get("kinds", ("positional", "content", "mixed", "sink"))]
    relabelled = a["head_kind"].values.copy()
    relabelled[2, 1] = kinds.index("sink")
    b = a.assign(head_kind=a["head_kind"].copy(data=relabelled))
    assert a["head_kind"].values[2, 1] != kinds.index("sink")  # the relabelling is a change
    r = compare(a, b)
    pair = next(p for p in r["heads"]["pairs"] if p["a"]["name"] == "L2H1")
    assert pair["b"]["name"] == "L2H1" and pair["similarity"] == pytest.approx(1.0, abs=1e-9)
    assert pair["sink_role"] and not pair["good"] and pair["kind"][1] == "sink"
    assert [(u["name"], u["why"]) for u in r["heads"]["unique"]["b"]] == [("L2H1", "sink role")]
    assert r["heads"]["unique"]["a"] == []  # A's head is no sink: its role is not one of one model
    assert sum(not p["good"] for p in r["heads"]["pairs"]) == 1
    assert "L2H1 (best 1.00, L2H1, sink role)" in format_report(r).replace("\n  ", " ")
