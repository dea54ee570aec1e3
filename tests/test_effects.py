"""Direct and total effects against a reference read off timm's own forward with hooks (not through the adapter)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REAL_IMAGES, REAL_VIT, REAL_VIT_ARCH, VARIANTS, images_for, small_vit

from vitscope import engine
from vitscope.engine.effects import decompose, why_not
from vitscope.models import ViTAdapter

LINEAR = [v for v in VARIANTS if v != "qknorm_scalenorm"]


def hooked_forward(model, x: torch.Tensor) -> dict:
    """One timm forward of image `x` [1, 3, h, w] with what the reference needs captured on the way: each block's
    input, each projection's input (the heads' joined outputs), each MLP's output, and the final norm's input."""
    seen: dict = {"block": [], "proj": [], "mlp": []}
    hooks = [model.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("final", a[0]))]
    for blk in model.blocks:
        hooks.append(blk.register_forward_pre_hook(lambda m, a: seen["block"].append(a[0])))
        hooks.append(blk.attn.proj.register_forward_pre_hook(lambda m, a: seen["proj"].append(a[0])))
        hooks.append(blk.mlp.register_forward_hook(lambda m, a, out: seen["mlp"].append(out)))
    try:
        seen["logits"] = model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def reference_terms(model, x: torch.Tensor, y: int) -> dict:
    """The label logit's terms written out for a timm ViT with token or average pooling (or a distilled DeiT): the
    final LayerNorm's σ from the unpruned final tokens, every component c through `w_y · γ ⊙ (c − mean c) / σ`."""
    seen = hooked_forward(model, x)
    final = seen["final"][0].double()  # [P, D]
    pool_avg = model.global_pool == "avg"
    norm = model.fc_norm if pool_avg else model.norm
    if pool_avg:  # norm is Identity, then the mean of the patch tokens, then fc_norm
        rows = lambda t: t[model.num_prefix_tokens:].mean(0, keepdim=True)  # noqa: E731
    else:
        rows = lambda t: t[:2] if hasattr(model, "head_dist") else t[:1]  # noqa: E731
    ref = rows(final)
    sigma = (ref.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    w = [model.head.weight[y].double()] + ([model.head_dist.weight[y].double()] if hasattr(model, "head_dist") else [])

    def term(c: torch.Tensor) -> float:  # c [P, D]: a residual component at every token
        n = (rows(c.double()) - rows(c.double()).mean(-1, keepdim=True)) / sigma * norm.weight.double()
        return float(sum(wi @ ni for wi, ni in zip(w, n, strict=False)) / len(w))

    H, dh = model.blocks[0].attn.num_heads, model.blocks[0].attn.head_dim
    direct, mlp, bias = [], [], 0.0
    for blk, o, m in zip(model.blocks, seen["proj"], seen["mlp"], strict=True):
        W = blk.attn.proj.weight.double()
        ls = blk.ls1.gamma.double() if hasattr(blk.ls1, "gamma") else 1.0
        direct.append([term(o[0, :, h * dh:(h + 1) * dh].double() @ W[:, h * dh:(h + 1) * dh].T * ls)
                       for h in range(H)])
        bias += term((blk.attn.proj.bias.double() * ls).expand_as(final))
        mlp.append(term(blk.ls2(m)[0]))
    heads = [model.head] + ([model.head_dist] if hasattr(model, "head_dist") else [])
    bias += sum(float(hd.weight[y].double() @ norm.bias.double() + hd.bias[y].double()) for hd in heads) / len(heads)
    return {"logit": float(seen["logits"][0, y]), "direct": torch.tensor(direct, dtype=torch.float64),
            "embed": term(seen["block"][0][0]), "mlp": torch.tensor(mlp, dtype=torch.float64), "bias": bias}


def pruned_logit(model, x: torch.Tensor, y: int, layer: int, head: int) -> float:
    """The label logit with one head's output zeroed where it enters the projection (a hook, not the engine)."""
    dh = model.blocks[0].attn.head_dim

    def zero(m, a):
        t = a[0].clone()
        t[..., head * dh:(head + 1) * dh] = 0
        return (t,)

    hook = model.blocks[layer].attn.proj.register_forward_pre_hook(zero)
    try:
        return float(model(x)[0, y])
    finally:
        hook.remove()


def check_against_reference(adapter: ViTAdapter, x: torch.Tensor, tol: float) -> None:
    labels = adapter.logits(x).argmax(-1)
    e = decompose(adapter, x, labels)
    for b in range(len(x)):
        ref = reference_terms(adapter.model, x[b:b + 1], int(labels[b]))
        assert e.logit[b] == pytest.approx(ref["logit"], abs=tol)
        assert float((e.direct[b] - ref["direct"]).abs().max()) <= tol
        assert float((e.mlp[b] - ref["mlp"]).abs().max()) <= tol
        assert float(e.embed[b]) == pytest.approx(ref["embed"], abs=tol)
        assert float(e.bias[b]) == pytest.approx(ref["bias"], abs=tol)


@pytest.mark.parametrize("variant", ["vit", "deit3", "deit_distilled", "avgpool"])
def test_the_decomposition_is_the_hooked_forwards(variant):
    a = small_vit(variant)
    check_against_reference(a, images_for(a, 3), 1e-5)


@pytest.mark.parametrize("variant", LINEAR)
def test_the_components_add_up_to_the_logit_in_every_linear_family(variant):
    a = small_vit(variant)
    x = images_for(a, 4)
    e = decompose(a, x, torch.arange(4) % a.num_classes)  # labels other than the prediction too
    assert why_not(a) is None
    assert float((e.total() - e.logit).abs().max()) <= 1e-5 * (1 + float(e.logit.abs().max()))
    assert float(e.direct.abs().max()) > 1e-3  # the heads do write into the logit
    assert bool((e.output_norm > 0).all())


def test_a_scale_norm_model_says_why_in_one_line():
    why = why_not(small_vit("qknorm_scalenorm"))
    assert why is not None and "\n" not in why and "scale_norm" in why


def test_a_broken_decomposition_is_caught():
    """The check can fail: a wrong head slice (each head's output read through its neighbour's columns) breaks the
    match with the reference even where the sum over heads survives."""
    a = small_vit("vit")
    x = images_for(a, 1)
    real = a.project

    def shifted(layer, heads_out, gate):
        return real(layer, heads_out.roll(a.head_dim, -1), gate)

    a.project = shifted
    with pytest.raises(AssertionError):
        check_against_reference(a, x, 1e-5)


def test_the_total_effect_is_the_logit_lost_by_pruning_the_head():
    a = small_vit("deit3")
    x = images_for(a, 2)
    r = engine.run(a, x)
    for b in range(2):
        y = int(r.labels[b])
        base = float(a.model(x[b:b + 1])[0, y])
        ref = torch.tensor([[base - pruned_logit(a.model, x[b:b + 1], y, layer, h) for h in range(a.num_heads)]
                            for layer in range(a.num_layers)])
        assert float((r.total_effect[b] - ref).abs().max()) <= 1e-5
    assert float(r.total_effect.abs().max()) > 1e-2


@pytest.mark.skipif(not (REAL_VIT.is_file() and REAL_IMAGES.is_dir()), reason="real ViT-Ti not under ../shared")
def test_the_decomposition_on_the_real_vit_tiny():
    import timm
    from PIL import Image
    from safetensors.torch import load_file
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(REAL_VIT_ARCH, pretrained=False)
    model.load_state_dict(load_file(str(REAL_VIT)))
    a = ViTAdapter(model, REAL_VIT_ARCH)
    tf = create_transform(**resolve_data_config({}, model=model))
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in sorted(REAL_IMAGES.rglob("*.JPEG"))[:2]])
    check_against_reference(a, x, 1e-4)
    e = decompose(a, x, a.logits(x).argmax(-1))
    assert float((e.total() - e.logit).abs().max()) <= 1e-4


@pytest.fixture(scope="module")
def svc(demo16):
    from vitscope.service import Service

    return Service(demo16)


def test_the_build_stores_each_images_effects(demo16, svc):
    """The store's direct effects and output norms are the decomposition of the image under its true label, and its
    total effects the logit lost by pruning each head (the engine's ablation, checked above)."""
    from vitscope.store import open_store

    ds = open_store(demo16)
    images = [i for i in range(svc.images) if svc.valid[i]][:3]
    x, labels = svc.inputs(images), torch.as_tensor(svc.labels[images])
    e = decompose(svc.adapter, x, labels)
    assert ds["direct_effect"][images].values == pytest.approx(e.direct.float().numpy(), abs=1e-5)
    assert ds["output_norm"][images].values == pytest.approx(e.output_norm.float().numpy(), abs=1e-5)
    total = engine.run(svc.adapter, x, labels, modes=(1,)).total_effect
    assert ds["total_effect"][images].values == pytest.approx(total.numpy(), abs=1e-4)
    assert ds["rollout_impact"][images].values.min() >= 0 and ds["rollout_impact"][images].values.max() > 0


def test_cli_effects_add_up_to_the_logit_and_read_like_a_table(demo16, svc):
    from cli_helpers import vitscope_here

    res = vitscope_here("ablate", demo16, "--image", 2, "--effects", "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r.keys() >= {"kind", "image", "class", "logit", "direct", "total", "components"}
    assert r["kind"] == "effects" and r["class"] == svc.class_names[int(svc.labels[2])]
    c = r["components"]
    parts = sum(map(sum, r["direct"])) + c["embed"] + sum(c["mlp"]) + c["bias"]
    assert parts == pytest.approx(r["logit"], abs=1e-5)
    base = svc.adapter.logits(svc.input(2))[0, int(svc.labels[2])]
    assert r["logit"] == pytest.approx(float(base), abs=1e-5)
    assert np.asarray(r["total"]) == pytest.approx(svc.ds["total_effect"][2].values, abs=1e-6)
    text = vitscope_here("ablate", demo16, "--image", 2, "--effects").stdout.splitlines()
    assert text[0].startswith(f"image 2 ({r['class']}): the label's logit {r['logit']:.4f} = ")
    assert len(text) == 3 + svc.adapter.num_layers + 1
    assert text[3].split()[1] == f"{r['direct'][0][0]:+.3f}/{r['total'][0][0]:+.3f}"


def test_effects_bad_input_is_one_line(demo16, svc, monkeypatch):
    from cli_helpers import vitscope_here

    res = vitscope_here("ablate", demo16, "--image", 99, "--effects")
    assert res.returncode == 2 and not res.stdout
    assert res.stderr == f"vitscope ablate: error: image 99 out of range: {demo16} has 16 images (0..15)\n"
    monkeypatch.setattr(type(svc.adapter), "why_not_linear", lambda self: "its final norm is an RMSNorm")
    got = svc.compute({"kind": "effects", "image": 0})
    assert got == {"kind": "effects", "error": f"{svc.adapter.spec} has no direct effects: its final norm is an "
                   "RMSNorm. Its total effects are in the store (total_effect)"}


def with_random_probe(base, classes: int = 10, seed: int = 5):
    """A backbone with a random linear probe as its head, as a store's probe gives one."""
    from vitscope.analysis.probe import HeadedAdapter, _feature_size
    from vitscope.vocab import LINEAR_PROBE

    g = torch.Generator().manual_seed(seed)
    d = _feature_size(base)
    coef = (torch.randn(classes, d, generator=g) * 3 / d**0.5).numpy()
    return HeadedAdapter(base, coef, torch.randn(classes, generator=g).numpy(), LINEAR_PROBE)


@pytest.mark.parametrize("name", ["vit", "vit_backbone", "deit_distilled", "dinov2", "dinov2_registers_cls", "clip"])
def test_the_components_add_up_in_every_transformers_family(name):
    from test_hf import images, make_model

    from vitscope.models.hf import HFViTAdapter

    a = HFViTAdapter(make_model(name))
    a = a if a.kind else with_random_probe(a)
    x = images(3)
    assert why_not(a) is None
    e = decompose(a, x, torch.tensor([1, 2, 3]))
    assert e.logit == pytest.approx(a.logits(x).double()[[0, 1, 2], [1, 2, 3]], abs=1e-5)
    assert float((e.total() - e.logit).abs().max()) <= 1e-5 * (1 + float(e.logit.abs().max()))
    assert float(e.direct.abs().max()) > 1e-3


def test_the_components_add_up_for_a_timm_backbone_with_a_probe():
    a = with_random_probe(small_vit("avgpool", num_classes=0))
    x = images_for(a, 3)
    e = decompose(a, x, torch.tensor([0, 4, 9]))
    assert e.logit == pytest.approx(a.logits(x).double()[[0, 1, 2], [0, 4, 9]], abs=1e-5)
    assert float((e.total() - e.logit).abs().max()) <= 1e-5


def test_where_a_pruned_heads_effect_reaches_the_logit_adds_up_to_its_total_effect():
    """With the unpruned run's norm scale, each component's term without the head minus with it, plus what the
    scale itself changes, adds up to the head's total effect; nothing upstream of the head moves, downstream does."""
    a = small_vit("deit3")
    x = images_for(a, 2)
    r = engine.run(a, x, modes=(1,))
    clean, gone = decompose(a, x, r.labels), decompose(a, x, r.labels, pruned=[(1, 2)])
    assert gone.direct[:, 1, 2].abs().max() == 0
    scale = gone.logit - gone.total()  # the pruned run's logit beyond its terms: the norm's scale moved
    assert (clean.total() - gone.total() - scale).float() == pytest.approx(r.total_effect[:, 1, 2], abs=1e-5)
    assert float((clean.direct[:, 0] - gone.direct[:, 0]).abs().max()) <= 1e-9  # nothing upstream moves
    assert float((clean.direct[:, 2] - gone.direct[:, 2]).abs().max()) > 1e-3  # downstream does
    assert float(scale.abs().max()) > 1e-4


def test_a_model_without_direct_effects_stores_nan_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """Its total effects stay (they need no decomposition); the build says why once, `info` says it again."""
    from cli_helpers import vitscope_here

    from vitscope.build import BuildConfig, build
    from vitscope.per_image import head_effects
    from vitscope.store import open_store

    a = small_vit("qknorm_scalenorm")
    x = images_for(a, 2)
    r = engine.run(a, x, modes=(1,))
    got = head_effects(a, x, r)
    assert torch.isnan(got["direct_effect"]).all() and torch.isnan(got["output_norm"]).all()
    assert torch.equal(got["total_effect"], r.total_effect) and torch.isfinite(r.total_effect).all()

    why = "its final norm is an RMSNorm, not a LayerNorm"
    monkeypatch.setattr(ViTAdapter, "why_not_linear", lambda self: why)
    out = build(BuildConfig(model="demo", images="demo", out=tmp_path / "s.zarr", limit=8, chunk=8, ae_epochs=1,
                            layout_points=100))
    err = capsys.readouterr().err
    assert f"demo: no direct effects, {why}: direct_effect and output_norm will be NaN\n" in err
    ds = open_store(out)
    assert ds.attrs["effects_why"] == why
    assert np.isnan(ds["direct_effect"].values).all() and np.isfinite(ds["total_effect"].values).all()
    assert f"no direct effects or output norms: {why}" in vitscope_here("info", out).stdout
