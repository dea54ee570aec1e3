"""Input attributions (`vitscope explain`): every map, curve and AUC against a plain reference written here straight
from the definitions — timm's own forward with fused attention off, the softmaxed attention caught by a hook on
`attn_drop` with its gradient kept, rollouts in loops, and one timm forward per occluded image — on random-init models
(distillation token, registers, a backbone with a probe, a transformers twin), on the real ViT-Ti where ../shared
has it, and the command on the demo store."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_IMAGES, REAL_VIT, REAL_VIT_ARCH, small_vit

from vitscope.analysis import explain as ex
from vitscope.analysis.probe import HeadedAdapter
from vitscope.cli import main
from vitscope.engine.explain import attention_gradients, occluded_probs
from vitscope.models.adapter import merge_heads
from vitscope.readout.store_data import StoreData
from vitscope.service import Service
from vitscope.service.explain import explain, sample
from vitscope.store import open_store
from vitscope.vocab import CLASSIFIER, LINEAR_PROBE, STORED_MAPS

MOST, LEAST = "most_relevant_first", "least_relevant_first"
TOL = dict(atol=1e-6, rtol=1e-5)


class Stub:
    """What `service.explain.explain` needs of a Service, for a model without a store: preprocessed images and
    their labels."""

    def __init__(self, adapter, images: torch.Tensor, labels: list[int], basis: str = CLASSIFIER) -> None:
        self.adapter, self.images, self.labels, self.prob_basis = adapter, images, np.asarray(labels), basis
        self.path, self.valid, self.class_names = Path("stub"), np.ones(len(labels), bool), []

    def check_image(self, image: int) -> int:
        return image

    def input(self, image: int) -> torch.Tensor:
        return self.images[image:image + 1]


def timm_logits(model, x):
    return model(x)


def reference(model, x: torch.Tensor, target: int, num_prefix: int, logits_of=timm_logits, occlude=True) -> dict:
    """The four maps, their curves and AUCs from the definitions, through timm's own forward (one per occluded
    image): `x` [1, 3, h, w] preprocessed."""
    model = copy.deepcopy(model).eval()
    caught = []

    def catch(_module, _inputs, attn):
        if attn.requires_grad:  # the one forward with a backward; the occluded ones run without
            attn.retain_grad()
            caught.append(attn)

    for blk in model.blocks:
        blk.attn.fused_attn = False  # the softmax matrix exists only on this path
        blk.attn.attn_drop.register_forward_hook(catch)
    logits_of(model, x.clone().requires_grad_(True))[0, target].backward()
    A = [a[0].detach().double() for a in caught]  # per layer [H, P, P]
    G = [a.grad[0].double() for a in caught]
    P, n = A[0].shape[-1], num_prefix
    eye = torch.eye(P, dtype=torch.float64)
    roll, grad_roll = eye.clone(), eye.clone()
    for a, g in zip(A, G, strict=True):
        hat = 0.5 * a.mean(0) + 0.5 * eye
        for row in range(P):
            hat[row] = hat[row] / hat[row].sum()
        roll = hat @ roll
        grad_roll = grad_roll + (g * a).clamp(min=0).mean(0) @ grad_roll
    maps = {"attention": A[-1].mean(0)[0, n:], "rollout": roll[0, n:], "grad_rollout": grad_roll[0, n:]}
    maps = {k: v.numpy() for k, v in maps.items()}

    grid = model.patch_embed.grid_size[0]
    ps = model.patch_embed.patch_size[0]

    def prob(hidden) -> float:
        y = x.clone()
        for i in hidden:
            r, c = divmod(int(i), grid)
            y[..., r * ps:(r + 1) * ps, c * ps:(c + 1) * ps] = 0
        with torch.no_grad():
            return float(logits_of(model, y).float().softmax(-1)[0, target])

    N = grid * grid
    if not occlude:
        return {"maps": maps}
    p0 = prob([])
    maps["occlusion"] = np.array([p0 - prob([i]) for i in range(N)])
    fractions = [k / 10 for k in range(10)]
    curves = {}
    for m, v in maps.items():
        most = sorted(range(N), key=lambda i: (-v[i], i))
        least = sorted(range(N), key=lambda i: (v[i], i))
        curves[m] = {d: [prob(order[:round(f * N)]) for f in fractions] for d, order in ((MOST, most), (LEAST, least))}
    auc = {m: {d: float(np.trapezoid(c, fractions)) for d, c in cs.items()} for m, cs in curves.items()}
    return {"maps": maps, "curves": curves, "auc": auc}


def images_of(adapter, n: int = 2, seed: int = 1) -> torch.Tensor:
    size = adapter.model.patch_embed.img_size
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def assert_same(got: dict, ref: dict, tol: dict = TOL) -> None:
    assert list(got["maps"]) == list(ex.METHODS)
    for m in ex.METHODS:
        np.testing.assert_allclose(got["maps"][m], ref["maps"][m], **tol, err_msg=m)
        for d in ex.DIRECTIONS:
            np.testing.assert_allclose(got["curves"][m][d], ref["curves"][m][d], **tol, err_msg=f"{m} {d}")
            assert got["auc"][m][d] == pytest.approx(ref["auc"][m][d], abs=tol["atol"]), (m, d)


@pytest.mark.parametrize("variant", ["vit", "deit_distilled", "registers"])
def test_maps_curves_and_aucs_equal_the_plain_reference(variant):
    """Each map, curve and AUC of a random-init classifier (fused attention on: the adapter's own matrix) equals
    the reference; with a distillation token or registers the map is the class token's row over the patches only."""
    ad = small_vit(variant, fused=True, **({"img_size": 48} if variant == "vit" else {}))
    x, target = images_of(ad), 3
    got = explain(Stub(ad, x, [target, 7]), 0)
    N = ad.grid**2
    assert ad.num_prefix == {"vit": 1, "deit_distilled": 2, "registers": 5}[variant]
    assert got["grid"] == [ad.grid, ad.grid] and (got["image"], got["target"]) == (0, target)
    assert all(len(v) == N for v in got["maps"].values())
    assert all(len(c) == 10 for cs in got["curves"].values() for c in cs.values())
    assert_same(got, reference(ad.model, x[:1], target, ad.num_prefix))


def test_a_backbone_uses_its_probes_logit():
    """A backbone's `s` is the probe's logit of the target, and P[target] the probe's: the reference computes the
    timm features and the linear map itself."""
    base = small_vit("vit", num_classes=0)
    g = torch.Generator().manual_seed(5)
    coef, bias = torch.randn(4, base.model.embed_dim, generator=g), torch.randn(4, generator=g)
    ad = HeadedAdapter(base, coef.numpy(), bias.numpy(), LINEAR_PROBE)
    x, target = images_of(base), 2

    def probe_logits(model, y):
        return model.forward_head(model.forward_features(y), pre_logits=True) @ coef.T + bias

    got = explain(Stub(ad, x, [target, 0], LINEAR_PROBE), 0)
    assert_same(got, reference(base.model, x[:1], target, 1, probe_logits))


def test_a_transformers_model_equals_its_timm_twin(tmp_path, monkeypatch):
    """`hf:` of a timm ViT converted with `timm_to_hf`: the same maps, curves and AUCs as the timm model."""
    from huggingface_hub import constants

    from vitscope.models import load_model
    from vitscope.models.convert import timm_to_hf

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    timm_ad = small_vit("vit")
    hf_ad = load_model(f"hf:{timm_to_hf(timm_ad, tmp_path / 'hf')}")
    assert type(hf_ad.model).__name__ == "ViTForImageClassification"
    x = images_of(timm_ad)
    assert_same(explain(Stub(hf_ad, x, [1, 1]), 1), explain(Stub(timm_ad, x, [1, 1]), 1), dict(atol=2e-5, rtol=1e-4))


def test_the_gradient_is_each_images_own_in_a_batch():
    """Images explained together get the gradients and attention each gets alone (the logits are summed)."""
    ad = small_vit("vit")
    x = images_of(ad, 3)
    together = attention_gradients(ad, x, torch.tensor([1, 4, 9]), with_ce=True)
    for b, t in enumerate([1, 4, 9]):
        alone = attention_gradients(ad, x[b:b + 1], torch.tensor([t]), with_ce=True)
        for got, ref in zip(together, alone, strict=True):
            torch.testing.assert_close(got[b:b + 1], ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ["deit_distilled", "registers"])
def test_the_builds_maps_equal_the_plain_reference(variant):
    """What a build keeps per image (`per_image.analyse_batch`: `input_map` [B, 3, N]) is the reference's three
    maps for each image's own label, with a distillation token or registers (their columns left out); and the
    gradient proxy from the same backward is still |∂CE/∂gate|."""
    from vitscope import engine
    from vitscope.per_image import analyse_batch
    from vitscope.store import Shape

    ad = small_vit(variant)
    x, labels = images_of(ad, 3), torch.tensor([1, 4, 9])
    lay = Shape(images=3, layers=ad.num_layers, heads=ad.num_heads, classes=ad.num_classes, grid=ad.grid,
                tokens=ad.num_tokens, topk=5, latent=4, binary_size=ad.grid, binary_ones=8, thumb=(8, 8), chunk=3)
    out = analyse_batch(ad, x, labels, lay, 0.01, "float32")
    assert out["input_map"].shape == (3, len(STORED_MAPS), ad.grid**2) and out["input_map"].dtype == np.float32
    for b, t in enumerate(labels.tolist()):
        ref = reference(ad.model, x[b:b + 1], t, ad.num_prefix, occlude=False)["maps"]
        for k, m in enumerate(STORED_MAPS):
            np.testing.assert_allclose(out["input_map"][b, k], ref[m], atol=1e-6, rtol=1e-4, err_msg=f"{b} {m}")
    # the head gate's gradient, as before the attention gates: one forward per head and image is not needed to
    # check it, the head's gate scales its output, so the old head-gated backward is the reference
    gates = torch.ones(3, ad.num_layers, ad.num_heads, requires_grad=True)
    with torch.enable_grad():
        h = ad.embed(x)
        for i in range(ad.num_layers):
            parts = ad.attention(i, h)
            o = (parts.attn @ parts.v) * gates[:, i, :, None, None]
            h = ad.finish_block(i, h, ad.project(i, merge_heads(o), parts.gate))
        ce = torch.nn.functional.cross_entropy(ad.head(h).float(), labels, reduction="sum")
        (g,) = torch.autograd.grad(ce, gates)
    np.testing.assert_allclose(out["grad_importance"], g.abs().numpy(), atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(engine.gradient_importance(ad, x, labels).numpy(), g.abs().numpy(), atol=1e-6,
                               rtol=1e-4)


def test_the_stored_maps_are_what_explain_computes(demo16):
    """The demo store's maps of every image equal `Service.explain`'s (which the reference checks above)."""
    svc, data = Service(demo16), StoreData(demo16)
    assert data.has_input_maps
    for image in (0, 5, 11):
        stored, got = data.input_maps(image), svc.explain(image, list(STORED_MAPS))["maps"]
        assert list(stored) == list(STORED_MAPS)
        for m in STORED_MAPS:
            assert stored[m].shape == (8, 8)
            np.testing.assert_allclose(stored[m].ravel(), got[m], atol=1e-6, rtol=1e-4, err_msg=f"{image} {m}")


def test_a_backbone_without_a_basis_stores_no_gradient_map():
    """Without a classifier or probe there is no logit: grad_rollout is NaN, attention and rollout are kept."""
    from vitscope.analysis import probe
    from vitscope.per_image import analyse_batch
    from vitscope.store import Shape

    ad = probe.placeholder(small_vit("vit", num_classes=0), 1)
    x = images_of(ad, 2)
    lay = Shape(images=2, layers=ad.num_layers, heads=ad.num_heads, classes=1, grid=ad.grid, tokens=ad.num_tokens,
                topk=1, latent=4, binary_size=ad.grid, binary_ones=8, thumb=(8, 8), chunk=2)
    maps = analyse_batch(ad, x, torch.tensor([0, 0]), lay, 0.01, "float32")["input_map"]
    k = STORED_MAPS.index("grad_rollout")
    assert np.isnan(maps[:, k]).all() and np.isfinite(np.delete(maps, k, axis=1)).all()
    ref = reference(ad.model, x[:1], 0, 1, logits_of=lambda model, y: model.forward_features(y)[:, 0],
                    occlude=False)["maps"]
    np.testing.assert_allclose(maps[0, STORED_MAPS.index("rollout")], ref["rollout"], atol=1e-6, rtol=1e-4)


def test_ties_go_to_the_lower_patch_index_in_both_directions():
    values = np.array([0.5, 1.0, 0.5, 1.0, 0.0, 0.5])
    assert ex.removal_order(values, MOST).tolist() == [1, 3, 0, 2, 5, 4]
    assert ex.removal_order(values, LEAST).tolist() == [4, 0, 2, 5, 1, 3]
    assert ex.removal_counts(16) == [0, 2, 3, 5, 6, 8, 10, 11, 13, 14]  # round(f·16)
    assert ex.removal_counts(25)[5] == 12  # 12.5: halves to even, as Python's round
    masks = ex.removal_masks(values, LEAST)
    assert masks.shape == (10, 6) and ex.removal_counts(6) == [0, 1, 1, 2, 2, 3, 4, 4, 5, 5]
    assert np.flatnonzero(masks[3]).tolist() == [0, 4] and np.flatnonzero(masks[5]).tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="unknown direction"):
        ex.removal_order(values, "sideways")


def test_auc_bootstrap_and_most_faithful():
    assert ex.auc(np.ones(10)) == pytest.approx(0.9)
    assert ex.auc(np.arange(10) / 10) == pytest.approx(0.405)
    rng = np.random.default_rng(3)
    v = rng.normal(2.0, 1.5, 400)
    lo, hi = ex.bootstrap_interval(v, seed=1)
    half = 1.96 * v.std() / len(v) ** 0.5  # the normal approximation the percentile interval tends to
    assert lo < v.mean() < hi and (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert ex.bootstrap_interval(v, seed=1) == (lo, hi) and ex.bootstrap_interval(np.full(7, 0.25)) == (0.25, 0.25)
    mean = {"attention": {MOST: 0.3, LEAST: 0.5}, "rollout": {MOST: 0.2, LEAST: 0.5},
            "grad_rollout": {MOST: 0.2, LEAST: 0.4}, "occlusion": {MOST: 0.4, LEAST: 0.45}}
    assert ex.most_faithful(mean) == {MOST: "rollout", LEAST: "attention"}


@pytest.mark.skipif(not (REAL_VIT.is_file() and REAL_IMAGES.is_dir()),
                    reason=f"real ViT-Ti or photos not found under {REAL_VIT.parents[1]}")
def test_real_vit_tiny_maps_equal_the_plain_reference():
    """On one photo, the real ViT-Ti's three attention maps equal the reference, and so does the occlusion of the
    patches the reference finds most and least relevant."""
    from vitscope.imagesets.folders import Preprocessor, read_rgb
    from vitscope.models import load_model

    ad = load_model(f"timm:{REAL_VIT_ARCH}", checkpoint=REAL_VIT)
    photo = sorted(REAL_IMAGES.glob("*/*.JPEG"))[0]
    x = Preprocessor(ad.model)(read_rgb(photo))[0][None]
    target = 0  # the first class folder: n01440764, tench
    attn, grad, _, _ = attention_gradients(ad, x, torch.tensor([target]))
    got = ex.attention_maps(attn[0], grad[0], ad.num_prefix)
    ref = reference(ad.model, x, target, ad.num_prefix, occlude=False)["maps"]
    for m in got:
        np.testing.assert_allclose(got[m], ref[m], atol=1e-6, rtol=2e-4, err_msg=m)
    assert 0.5 < got["rollout"].sum() < 1.0  # the rest of the row sits on the class token
    patches = [*np.argsort(-ref["grad_rollout"])[:2], *np.argsort(ref["grad_rollout"])[:2]]
    masks = torch.zeros(1 + len(patches), ad.grid**2, dtype=torch.bool)
    for r, i in enumerate(patches):
        masks[r + 1, i] = True
    p = occluded_probs(ad, x[0], target, masks).double().numpy()
    model = ad.model
    with torch.no_grad():
        for r, i in enumerate(patches):
            y = x.clone()
            row, col = divmod(int(i), ad.grid)
            y[..., row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = 0
            p_ref = model(x).softmax(-1)[0, target] - model(y).softmax(-1)[0, target]
            assert p[0] - p[r + 1] == pytest.approx(float(p_ref), abs=1e-5)


# -- the command, on the demo store ------------------------------------------------------------------------------


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["explain", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_explain_json_is_the_documented_object(demo16, capsys):
    """`--image 3 --json`: exactly the keys and shapes the command documents, the store's label as target, every
    curve starting at the store's P[true], and the maps of timm's forward on the stored thumbnail."""
    code, out, err = run(capsys, demo16, "--image", 3, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert list(r) == ["image", "target", "grid", "maps", "curves", "auc"]
    ds = open_store(demo16)
    assert (r["image"], r["target"], r["grid"]) == (3, int(ds["label"][3]), [8, 8])
    assert list(r["maps"]) == list(r["curves"]) == list(r["auc"]) == list(ex.METHODS)
    assert all(len(v) == 64 for v in r["maps"].values())
    for m in ex.METHODS:
        assert list(r["curves"][m]) == list(r["auc"][m]) == list(ex.DIRECTIONS)
        for d in ex.DIRECTIONS:
            assert len(r["curves"][m][d]) == 10
            assert r["curves"][m][d][0] == pytest.approx(float(ds["baseline_prob"][3]), abs=1e-5)
    svc = Service(demo16)
    assert_same(r, reference(svc.adapter.model, svc.input(3), r["target"], 1), dict(atol=2e-6, rtol=1e-4))


def test_explain_table(demo16, capsys):
    code, out, err = run(capsys, demo16, "--image", 3, "--methods", "rollout", "occlusion")
    assert code == 0, err
    r = Service(demo16).explain(3, ["rollout", "occlusion"])
    lines = out.strip().splitlines()
    assert lines[0].startswith("image 3, target ") and len(lines) == 5
    for line, m in zip(lines[2:4], ["rollout", "occlusion"], strict=True):
        name, most, least = line.split()[:3]
        assert (name, most, least) == (m, f"{r['auc'][m][MOST]:.4f}", f"{r['auc'][m][LEAST]:.4f}")


def test_explain_benchmark(demo16, capsys):
    """`--images 4`: a seeded sample of 4 readable images; per method and direction the mean of their AUCs (each
    image explained alone here), an interval around it, the most faithful method; a progress bar as it runs."""
    code, out, err = run(capsys, demo16, "--images", 4, "--seed", 2, "--json")
    assert code == 0 and "4/4" in err, err  # the bar on stderr, the one object on stdout
    r = json.loads(out)
    assert list(r) == ["images", "of", "cls", "seed", "mean_auc", "interval", "most_faithful"]
    assert len(r["images"]) == 4 == len(set(r["images"])) and r["images"] == sorted(r["images"]) and r["of"] == 16
    svc = Service(demo16)
    each = [svc.explain(i) for i in r["images"]]
    for m in ex.METHODS:
        for d in ex.DIRECTIONS:
            mean = np.mean([e["auc"][m][d] for e in each])
            assert r["mean_auc"][m][d] == pytest.approx(mean, abs=1e-9)
            lo, hi = r["interval"][m][d]
            assert lo <= mean <= hi
    mean = r["mean_auc"]
    assert r["most_faithful"] == {MOST: min(ex.METHODS, key=lambda m: mean[m][MOST]),
                                  LEAST: max(ex.METHODS, key=lambda m: mean[m][LEAST])}
    code, out, err = run(capsys, demo16, "--images", 2, "--seed", 2)
    assert code == 0 and "2/2" in err  # the bar reached the end
    assert out.splitlines()[0].startswith("faithfulness over 2 of 16 images (all classes, seed 2)")
    assert out.strip().splitlines()[-1].startswith("most faithful: ")


@pytest.mark.parametrize("args, line", [
    (["--image", 99], "image 99 out of range"),
    (["--image", 1, "--methods", "saliency"], "unknown explanation method 'saliency'"),
    (["--image", 1, "--images", 3], "give --image I (one image) or --images N"),
    (["--images", 0], "--images needs a count of at least 1"),
])
def test_bad_input_is_one_line(demo16, capsys, args, line):
    code, out, err = run(capsys, demo16, *args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and line in err, err


def test_a_store_whose_model_cannot_be_loaded_is_one_line(tmp_path, capsys):
    from app_helpers import make_store

    path = make_store(tmp_path / "s.zarr", images=4, layers=2, heads=2, grid=4, classes=3)
    code, out, err = run(capsys, path, "--image", 1)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "its model cannot be loaded here" in err, err


def test_explain_runs_in_the_services_slow_lane(demo16):
    """The app's way in: an `explain` request in the dispatcher's slow lane answers what `Service.explain` does,
    with progress to its end; a bad image is that request's one-line error; `explain_set` is a request too."""
    from vitscope.service.dispatch import FAST, Dispatcher, LocalBackend

    assert {"explain", "explain_set"}.isdisjoint(FAST)
    d = Dispatcher(LocalBackend(demo16))
    try:
        seen = []
        r = d.submit("s", {"kind": "explain", "image": 3, "methods": ["rollout", "occlusion"]},
                     progress=lambda done, total: seen.append((done, total))).result(timeout=300)
        want = Service(demo16).explain(3, ["rollout", "occlusion"])
        assert r["kind"] == "explain" and {k: r[k] for k in want} == want
        assert len(seen) > 2 and seen[-1][0] == seen[-1][1] and [s[0] for s in seen] == sorted(s[0] for s in seen)
        bad = d.ask("s", {"kind": "explain", "image": 99}, timeout=60)
        assert bad["kind"] == "explain" and "image 99 out of range" in bad["error"]
        r = d.ask("s", {"kind": "explain_set", "images": 2, "seed": 1, "methods": ["attention"]}, timeout=300)
        assert r["kind"] == "explain_set" and r["images"] == sample(Service(demo16), 2, None, 1)[0]
    finally:
        d.close()
