"""`vitscope compare` on the real pair: the ViT-Ti (AugReg, ImageNet-21k → 1k) against DeiT-Ti (DeiT recipe,
ImageNet-1k only; its LayerNorm parameters rounded to steps of 1/32–1/64) over the same photos, as reported in
docs/models.md ("`vitscope compare` on the pair"). The stores are tests/conftest.py's, shared with
test_real_model.py and test_real_deit.py: the ViT-Ti's 16 photos, 8 of them through DeiT-Ti, so the comparison
matches 8. Every expected value is computed from the two stores' own arrays, not from the code under test.
Skips when ../shared is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import vitscope_here
from conftest import REAL_DEIT, REAL_DEIT_ARCH, REAL_IMAGES, REAL_VIT, REAL_VIT_ARCH

from vitscope.vocab import HEAD_KINDS, head_name

if not (REAL_VIT.is_file() and REAL_DEIT.is_file() and REAL_IMAGES.is_dir()):
    pytest.skip(f"real ViT-Ti, DeiT-Ti or photos not found under {REAL_VIT.parents[1]}", allow_module_level=True)


@pytest.fixture(scope="module")
def stores(real_vit_store, real_deit_store):
    return real_vit_store, real_deit_store


@pytest.fixture(scope="module")
def result(stores):
    from vitscope.compare import compare

    return compare(*stores)


def matched(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Positions in A and B of the image ids both hold (every photo of these stores is valid: asserted)."""
    assert a["valid"].values.all() and b["valid"].values.all()
    ids_b = [str(i) for i in b["image_id"].values]
    ia = [k for k, i in enumerate(a["image_id"].values) if str(i) in ids_b]
    ib = [ids_b.index(str(a["image_id"].values[k])) for k in ia]
    return np.asarray(ia), np.asarray(ib)


def top1(ds) -> np.ndarray:
    return ds["topk_idx"].values[:, 0, 0, 0, 0]  # [image]: mode 0 (unpruned), first layer/head slot, best class


def test_images_agreement_and_accuracy_are_the_stores(stores, result):
    """The photos DeiT-Ti saw are a subset of the ViT-Ti's, all matched; the top-1 agreement and each model's
    accuracy equal those computed from `topk_idx` and `label` of the matched photos."""
    a, b = stores
    ia, ib = matched(a, b)
    assert len(ib) == b.sizes["image"] < a.sizes["image"]  # DeiT-Ti's photos are all among the ViT-Ti's
    assert result["images"] == len(ia) and result["images_listed"] == [a.sizes["image"], b.sizes["image"]]
    ta, tb = top1(a)[ia], top1(b)[ib]
    label = a["label"].values[ia]
    np.testing.assert_array_equal(b["label"].values[ib], label)  # the same class indices from the same folders
    assert result["top1_agreement"] == pytest.approx(np.mean(ta == tb))
    assert result["accuracy"] == pytest.approx([np.mean(ta == label), np.mean(tb == label)])


def test_the_vit_sink_heads_are_its_only_unique_roles(stores, result):
    """The ViT-Ti's sink heads (kind `sink` in its store) are exactly its layers 9–11 and exactly the roles listed as
    the ViT-Ti's only, each for being a sink paired with no sink; DeiT-Ti has no sink head and no role listed as its
    own (on 200 photos: the same nine, and none)."""
    a, b = stores
    sink = HEAD_KINDS.index("sink")
    sinks_a = {head_name(int(i), int(h)) for i, h in zip(*np.nonzero(a["head_kind"].values == sink), strict=True)}
    assert sinks_a == {head_name(i, h) for i in range(9, 12) for h in range(3)}
    assert not (b["head_kind"].values == sink).any()
    unique = result["heads"]["unique"]
    assert {u["name"] for u in unique["a"]} == sinks_a
    assert all(u["why"] == "sink role" for u in unique["a"]), unique["a"]
    assert unique["b"] == []
    by_a = {p["a"]["name"]: p for p in result["heads"]["pairs"]}
    assert all(by_a[n]["sink_role"] and not by_a[n]["good"] for n in sinks_a)


def test_layer_trends_are_the_stores_and_deit_layer0_is_less_local(stores, result):
    """Per-layer distances and entropies equal the means of the stores' arrays over the matched photos; DeiT-Ti's
    layer 0 attends farther than the ViT-Ti's (Raghu et al. 2021's direction for less pre-training data; 4.38 vs 3.36
    patches on 200 photos), and the ViT-Ti's late sink layers farther than DeiT-Ti's (they look at the corners)."""
    a, b = stores
    ia, ib = matched(a, b)
    mean = {}
    for name in ("attention_distance", "strength_entropy"):
        mean[name] = [ds[name].transpose("image", "layer", "head").values[idx].astype(np.float64).mean(axis=(0, 2))
                      for ds, idx in ((a, ia), (b, ib))]
    rows = result["layers"]
    assert [r["layer_b"] for r in rows] == list(range(12))
    for key, name in (("distance", "attention_distance"), ("entropy", "strength_entropy")):
        got = np.asarray([r[key] for r in rows])  # [layer, 2]
        np.testing.assert_allclose(got, np.stack(mean[name], axis=1), rtol=1e-6, err_msg=key)
    dist_a, dist_b = mean["attention_distance"]
    assert dist_b[0] > dist_a[0], (dist_a[0], dist_b[0])
    assert (dist_a[9:] > dist_b[9:]).all(), (dist_a[9:], dist_b[9:])


def test_early_heads_pair_among_early_layers(result):
    """The ViT-Ti's heads of layers 0–2 (offset diagonals and self-attending heads) pair as good partners with heads
    of DeiT-Ti's layers 0–3: both models learn the same early toolkit, in another order. 200 photos: 9 of 9
    (similarity 0.69–0.94); this sample: 8 of 9, L0H1 (the ViT-Ti's least local head of layer 0, 5.2 patches) pairs
    with L4H1. A pairing blind to the early layers would put about a third of them there."""
    early = [p for p in result["heads"]["pairs"] if p["a"]["layer"] <= 2]
    assert len(early) == 9
    inside = [p["b"]["layer"] <= 3 and p["good"] for p in early]
    assert sum(inside) >= 8, [(p["a"]["name"], p["b"]["name"], p["good"]) for p in early]


def test_cli_json_is_the_comparison(stores, result):
    """`vitscope compare A B --json` prints the same result as the Python API."""
    a, b = stores
    res = vitscope_here("compare", a.attrs["store_path"], b.attrs["store_path"], "--json")
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    assert printed.pop("stores") == [a.attrs["store_path"], b.attrs["store_path"]]
    assert printed["heads"]["unique"] == json.loads(json.dumps(result["heads"]["unique"]))
    assert printed == json.loads(json.dumps(result))


def test_the_export_of_the_pair_pairs_the_vit_sinks_as_the_comparison_does(stores, result, tmp_path):
    """`vitscope export A B --image I` on the real pair: the file names both models and, for a ViT-Ti sink head,
    carries the pair line the comparison gives (no good partner: a sink paired with no sink)."""
    from vitscope.app.compare_export import tap_states
    from vitscope.app.compare_view import CompareView

    a, b = (s.attrs["store_path"] for s in stores)
    out = tmp_path / "pair.html"
    res = vitscope_here("export", a, b, "--image", "0", "--out", out)
    assert res.returncode == 0, res.stderr
    html = out.read_text(encoding="utf-8")
    assert f"timm:{REAL_VIT_ARCH}" in html and f"timm:{REAL_DEIT_ARCH}" in html
    sink = next(p for p in result["heads"]["pairs"] if p["sink_role"])
    view = CompareView(a, b)
    view.select_image(0)
    states = tap_states(view, "a")
    line = states[sink["a"]["layer"] * 3 + sink["a"]["head"]]["info"]
    assert f"A {sink['a']['name']} ↔ B {sink['b']['name']}" in line and "a sink paired with no sink" in line
    assert f"A {sink['a']['name']} \\u2194 B {sink['b']['name']}" in html  # the page's copy (JSON, HTML-escaped)
