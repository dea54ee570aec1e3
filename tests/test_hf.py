"""transformers models (`--model hf:`): the adapter against transformers' own forward, every engine metric against
one transformers forward per (layer, head, mode), preprocessing against transformers' PIL image processors, a
store from a model folder, the real ViT-Ti converted from timm, and one line for what is not supported.

Random-init small configs built locally; nothing is downloaded (the hub is offline for every test here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from conftest import REAL_IMAGES, REAL_VIT, REAL_VIT_ARCH
from PIL import Image

from vitscope import engine
from vitscope.engine.metrics import importance_metrics, region_mask
from vitscope.errors import UnsupportedModelError, VitscopeError
from vitscope.imagesets.folders import Preprocessor, normalise
from vitscope.models import load_model
from vitscope.models.adapter import merge_heads
from vitscope.models.hf import HFPreprocessing, HFViTAdapter
from vitscope.vocab import METRICS, MODES

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-vitscope-test", "OMP_NUM_THREADS": "1"}
SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=32,
             patch_size=8, num_labels=10, layer_norm_eps=1e-6)
# name → (config class, model class, config extras): every supported family, classifiers and backbones.
FAMILIES = {
    "vit": ("ViTConfig", "ViTForImageClassification", {}),
    "vit_backbone": ("ViTConfig", "ViTModel", {}),
    "deit_distilled": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", {}),  # 2 prefix tokens, 2 heads
    "dinov2": ("Dinov2Config", "Dinov2ForImageClassification", {"mlp_ratio": 2}),  # LayerScale, CLS + mean patch
    "dinov2_swiglu": ("Dinov2Config", "Dinov2Model", {"use_swiglu_ffn": True}),
    "dinov2_registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", {"num_register_tokens": 4}),
    "dinov2_registers_cls": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification",
                             {"num_register_tokens": 2}),
    "clip": ("CLIPVisionConfig", "CLIPVisionModel", {"hidden_act": "quick_gelu"}),  # pre-norm, post-norm pooling
}
LABELS = torch.tensor([1, 2, 3])
# The output projection of each layer, under the names transformers 4.52–5.x give it (found independently of
# the adapter's table, so a wrong entry there is not copied into the reference).
OUT_PROJ = ("attention.output.dense", "attention.o_proj", "self_attn.out_proj", "self_attn.o_proj")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)


def make_model(name: str, seed: int = 0, attn: str = "sdpa", qk_scale: float = 3.0) -> torch.nn.Module:
    """A random-init model with peaky attention and weights of a trained scale (as conftest.make_peaky)."""
    cfg_cls, model_cls, extra = FAMILIES[name]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)._from_config(getattr(transformers, cfg_cls)(**SMALL, **extra),
                                                          attn_implementation=attn)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif pname.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:  # norm weights, LayerScale, tokens
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.2)
        for mname, m in model.named_modules():
            if mname.split(".")[-1] in ("query", "key", "q_proj", "k_proj"):
                m.weight.mul_(qk_scale)
    return model.eval()


def hf_features(model, x) -> torch.Tensor:
    """transformers' pooled output: the class token after the final norm (CLIP: `pooler_output`)."""
    out = model.base_model(pixel_values=x)
    return out.pooler_output if type(model).__name__ == "CLIPVisionModel" else out.last_hidden_state[:, 0]


def with_probe(ad: HFViTAdapter, seed: int = 5) -> torch.nn.Linear:
    """A backbone gets a random linear probe on `features` as its head (the engine needs probabilities)."""
    torch.manual_seed(seed)
    probe = torch.nn.Linear(SMALL["hidden_size"], 10).eval().requires_grad_(False)
    probe.weight.mul_(3)
    ad.head = lambda x: probe(ad.features(x))
    return probe


def hf_logits(model, x, probe=None) -> torch.Tensor:
    return model(pixel_values=x).logits if probe is None else probe(hf_features(model, x))


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# -- (a) the adapter is the model ----------------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_adapter_pieces_and_outputs_match_transformers(name, attn):
    """Embeddings, every layer built from the explicit attention, the fused path and the logits or features
    equal transformers' own forward, eager or SDPA (ours does not depend on it): logits and features at 1e-5,
    hidden states (up to ~9 here) at 5e-5, float32 rounding at their scale (transformers' own SDPA and eager
    forwards differ by up to 1.7e-5 in them)."""
    model = make_model(name, attn=attn)
    ad = HFViTAdapter(model, f"test:{name}")
    x = images()
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        h = ad.embed(x)
        torch.testing.assert_close(h, out.hidden_states[0], atol=1e-6, rtol=0)
        for i in range(ad.num_layers):
            parts = ad.attention(i, h)
            torch.testing.assert_close(parts.attn.sum(-1), torch.ones(parts.attn.shape[:-1]), atol=1e-5, rtol=0)
            h = ad.finish_block(i, h, ad.project(i, merge_heads(parts.attn @ parts.v), parts.gate))
            torch.testing.assert_close(h, out.hidden_states[i + 1], atol=5e-5, rtol=0)
            torch.testing.assert_close(ad.blocks[i](out.hidden_states[i]), out.hidden_states[i + 1], atol=5e-5,
                                       rtol=0)
        last = ad.run_blocks(ad.embed(x), 0)
        assert last.shape[1] == (ad.head_rows or ad.num_tokens)
        torch.testing.assert_close(ad.features(last), hf_features(model, x), atol=1e-5, rtol=0)
        if hasattr(out, "logits"):
            torch.testing.assert_close(ad.logits(x), out.logits, atol=1e-5, rtol=0)
            assert ad.num_classes == 10
        else:
            assert ad.num_classes == 0
            with pytest.raises(UnsupportedModelError, match="no classifier: .* backbones get a linear probe") as e:
                ad.head(last)
            assert "\n" not in str(e.value)
    prefix = {"deit_distilled": 2, "dinov2_registers": 5, "dinov2_registers_cls": 3}.get(name, 1)
    assert (ad.num_prefix, ad.grid, ad.num_tokens, ad.patch_size) == (prefix, 4, prefix + 16, 8)


# -- (b) every metric against one transformers forward per ablation ---------------------------------


class Zeroing:
    """State of `zeroing_attention`: which layer and head to prune, with which [P,P] region, and a call count
    (one call per layer and forward, in layer order)."""

    layer: int | None = None
    head: int = 0
    mask: torch.Tensor | None = None
    calls: int = 0


def zeroing_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention (its `eager_attention_forward`, eval, no mask), with the region of one
    head's softmax weights set to 0 in one layer."""
    assert attention_mask is None and dropout == 0.0
    i, Zeroing.calls = Zeroing.calls, Zeroing.calls + 1
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    w = (torch.matmul(query, key.transpose(2, 3)) * scaling).softmax(dim=-1)
    if i == Zeroing.layer:
        w = w.clone()
        w[:, Zeroing.head] = w[:, Zeroing.head].masked_fill(Zeroing.mask, 0.0)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


transformers.AttentionInterface.register("vitscope_zeroing", zeroing_attention)


def out_projections(model) -> list[torch.nn.Module]:
    mods = [m for n, m in model.named_modules() if n.endswith(OUT_PROJ)]
    assert len(mods) == model.config.num_hidden_layers
    return mods


@torch.no_grad()
def reference_importance(model, x, labels, n: int, probe=None):
    """(importance [B,L,H,6,4], top-k probabilities): one transformers forward per (layer, head, mode), with
    that head's region of A zeroed by `zeroing_attention`; z and z' from a hook on the output projection."""
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    p = hf_logits(model, x, probe).float().softmax(-1)  # the model as loaded (SDPA)
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, a, out, i=i: captured.append((i, out))) for i, m in
             enumerate(out_projections(model))]
    model.config._attn_implementation = "vitscope_zeroing"
    try:
        Zeroing.layer, Zeroing.calls = None, 0
        hf_logits(model, x, probe)
        z_base = [z for _, z in captured]
        tokens = z_base[0].shape[1]
        imp = torch.zeros(x.shape[0], L, H, len(MODES), len(METRICS))
        top = torch.zeros(x.shape[0], L, H, len(MODES), 5)
        for i in range(L):
            for h in range(H):
                for mi, mode in enumerate(MODES):
                    Zeroing.layer, Zeroing.head, Zeroing.mask, Zeroing.calls = i, h, region_mask(mode, tokens, n), 0
                    captured.clear()
                    p_new = hf_logits(model, x, probe).float().softmax(-1)
                    assert Zeroing.calls == L  # our attention function ran in every layer
                    imp[:, i, h, mi] = importance_metrics(p, p_new, labels, z_base[i], dict(captured)[i], n)
                    top[:, i, h, mi] = p_new.topk(5, dim=-1).values
    finally:
        model.config._attn_implementation = "sdpa"
        Zeroing.layer = None
        for hk in hooks:
            hk.remove()
    return imp, top


ENGINE_FAMILIES = ["vit", "deit_distilled", "dinov2", "dinov2_registers", "dinov2_registers_cls", "clip"]


@pytest.mark.parametrize("name", ENGINE_FAMILIES)
def test_engine_matches_one_transformers_forward_per_ablation(name):
    model = make_model(name)
    ad = HFViTAdapter(model, f"test:{name}")
    probe = with_probe(ad) if ad.kind is None else None
    x = images()
    r = engine.run(ad, x, LABELS, max_batch=7)  # a chunk size that splits heads and images
    imp, top = reference_importance(model, x, LABELS, ad.num_prefix, probe)
    torch.testing.assert_close(r.importance, imp, atol=1e-5, rtol=0)
    torch.testing.assert_close(r.topk_prob, top, atol=1e-5, rtol=0)
    # the ablations must matter, or the comparison proves nothing
    for metric in METRICS[1:]:
        assert r.metric(metric, 1).mean() > 1e-3, metric
    assert (r.metric("prob", 1) - r.metric("prob", 0)).abs().max() > 1e-2
    # Mode 1 is also zeroing the head's slice of the output projection's input, on transformers' SDPA path.
    layer, head, dh = 1, 2, ad.head_dim

    def zero_slice(module, args):
        y = args[0].clone()
        y[..., head * dh:(head + 1) * dh] = 0
        return (y,)

    hook = out_projections(model)[layer].register_forward_pre_hook(zero_slice)
    try:
        with torch.no_grad():
            p = hf_logits(model, x, probe).softmax(-1)
    finally:
        hook.remove()
    torch.testing.assert_close(r.metric("prob", 1)[:, layer, head], p.gather(1, LABELS[:, None])[:, 0],
                               atol=1e-5, rtol=0)


def test_the_reference_catches_a_wrong_head_slice(monkeypatch):
    """The comparison above fails for an adapter that prunes the wrong slice (heads 0 and 1 swapped)."""
    model = make_model("vit")
    ad = HFViTAdapter(model, "test:vit")
    x = images()
    imp, _ = reference_importance(model, x, LABELS, ad.num_prefix)
    project = ad.project
    dh = ad.head_dim

    def swapped(layer, heads_out, gate):
        y = heads_out.clone()
        y[..., :dh], y[..., dh:2 * dh] = heads_out[..., dh:2 * dh], heads_out[..., :dh]
        return project(layer, y, gate)

    monkeypatch.setattr(ad, "project", swapped)
    r = engine.run(ad, x, LABELS)
    assert (r.importance - imp).abs().max() > 1e-2


# -- preprocessing ------------------------------------------------------------------------------------


def pil_processor(name: str, **kwargs):
    """transformers' PIL implementation of an image processor (5.x: `…Pil`; 4.x: the default slow class)."""
    return (getattr(transformers, f"{name}Pil", None) or getattr(transformers, name))(**kwargs)


@pytest.mark.parametrize("name,kwargs", [
    ("ViTImageProcessor", dict(size={"height": 32, "width": 32})),  # squash, bilinear, mean = std = 0.5
    ("DeiTImageProcessor", dict(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32})),
    ("CLIPImageProcessor", dict(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})),
    ("BitImageProcessor", dict(size={"shortest_edge": 35}, crop_size={"height": 32, "width": 32},
                               rescale_factor=1 / 127.5, do_normalize=False)),
])
def test_preprocessing_equals_transformers_pil_processor(name, kwargs):
    proc = pil_processor(name, **kwargs)
    pre = HFPreprocessing.from_processor(proc, name)
    g = np.random.default_rng(0)
    for h, w in [(37, 53), (64, 45), (50, 50), (29, 80)]:
        image = Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
        thumb = np.asarray(pre.geometry(image))
        assert thumb.shape == (32, 32, 3)
        ours = normalise(thumb, pre.mean, pre.std)
        theirs = torch.as_tensor(np.asarray(proc(image, return_tensors="np")["pixel_values"][0]))
        torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=0)


def save_folder(model, folder, processor):
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_load_hf_folder_and_its_preprocessing(tmp_path):
    model = make_model("deit_distilled")
    proc = transformers.DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32},
                                           image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25])
    folder = save_folder(model, tmp_path / "deit", proc)
    ad = load_model(f"hf:{folder}")
    assert isinstance(ad, HFViTAdapter) and ad.describe()["prefix_tokens"] == 2
    assert model.config._attn_implementation != "eager" and ad.model.config._attn_implementation == "eager"
    pre = Preprocessor(ad.model)
    assert pre.config["input_size"] == [3, 32, 32] and pre.config["image_processor"] == "DeiTImageProcessor"
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 60, 3), dtype=np.uint8))
    x, thumb = pre(image)
    torch.testing.assert_close(normalise(thumb, pre.config["mean"], pre.config["std"]), x)  # thumbnails reproduce
    with torch.no_grad():
        torch.testing.assert_close(ad.logits(x[None]), model(pixel_values=x[None]).logits, atol=1e-5, rtol=0)


# -- (c) a store from a model folder ---------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitscope.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **OFFLINE})


def run_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """`vitscope ARGS` in this process: `vitscope.cli.main`, which `python -m vitscope.cli` runs (its return code,
    stdout and stderr), without a fresh interpreter's ~10 s of imports and JIT. For `info` and `export` of a store
    that a `run_cli` build (a fresh interpreter, offline) has just made."""
    from vitscope.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def image_dir(root, n: int = 3):
    g = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(g.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_build_a_store_from_a_classifier_folder(tmp_path):
    from vitscope.store import open_store

    model = make_model("vit")
    folder = save_folder(model, tmp_path / "vit", transformers.ViTImageProcessor(size={"height": 32, "width": 32}))
    out = tmp_path / "s.zarr"
    res = run_cli("build", "--model", f"hf:{folder}", "--images", str(image_dir(tmp_path / "imgs")), "--out",
                  str(out), "--ae-epochs", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    ds = open_store(out)
    assert ds.sizes["image"] == 6 and bool(ds["valid"].all()) and ds.attrs["model_class"] == "ViTForImageClassification"
    ad = load_model(f"hf:{folder}")
    thumbs = ds["thumbnail"].values
    x = normalise(thumbs, [0.5] * 3, [0.5] * 3)
    labels = torch.as_tensor(ds["label"].values)
    r = engine.run(ad, x, labels)
    torch.testing.assert_close(torch.as_tensor(ds["importance"].values), r.importance, atol=1e-5, rtol=0)


def class_dir(root, classes: int = 5, n: int = 2):
    """`classes` class folders of `n` images each: enough labels for a probe, and for a top-5."""
    g = np.random.default_rng(2)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(g.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


BACKBONE_PROCESSORS = {
    "vit_backbone": lambda: transformers.ViTImageProcessor(size={"height": 32, "width": 32}),
    "dinov2_registers": lambda: transformers.BitImageProcessor(size={"shortest_edge": 32},
                                                               crop_size={"height": 32, "width": 32}),
    "clip": lambda: transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
}


@pytest.mark.parametrize("name", list(BACKBONE_PROCESSORS))
def test_a_backbone_builds_a_probe_store_exact_against_transformers(name, tmp_path, capsys):
    """A backbone gets a linear probe (labelled folders): its prob/jsd, through the stored probe, equal one
    transformers forward per (layer, head, mode) on the pooled feature → the probe."""
    from vitscope.store import open_store

    model = make_model(name)
    folder = save_folder(model, tmp_path / name, BACKBONE_PROCESSORS[name]())
    out = tmp_path / "s.zarr"
    res = run_cli("build", "--model", f"hf:{folder}", "--images", str(class_dir(tmp_path / "imgs")), "--out",
                  str(out), "--ae-epochs", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    ds = open_store(out)
    assert ds.attrs["prob_basis"] == "linear probe" and ds["probe_coef"].shape == (5, SMALL["hidden_size"])
    ad = load_model(f"hf:{folder}")
    probe = torch.nn.Linear(SMALL["hidden_size"], 5).eval().requires_grad_(False)
    probe.weight.copy_(torch.as_tensor(ds["probe_coef"].values))
    probe.bias.copy_(torch.as_tensor(ds["probe_bias"].values))
    cfg = json.loads(ds.attrs["data_config"])
    x = normalise(ds["thumbnail"].values[:2], cfg["mean"], cfg["std"])
    labels = torch.as_tensor(ds["label"].values[:2])
    imp, top = reference_importance(model, x, labels, ad.num_prefix, probe)
    torch.testing.assert_close(torch.as_tensor(ds["importance"].values[:2]), imp, atol=2e-5, rtol=0)
    torch.testing.assert_close(torch.as_tensor(ds["topk_prob"].values[:2]), top, atol=2e-5, rtol=0)
    info = run_here(capsys, "info", str(out))
    assert info.returncode == 0 and "prob basis: linear probe" in info.stdout, info.stderr
    # the service reads the same probe: P'[true] of a head pruned alone is the stored one
    got = run_cli("ablate", str(out), "--image", "1", "--prune", "2:1", "--json")
    assert got.returncode == 0, got.stderr
    assert abs(json.loads(got.stdout)["prob"] - float(ds["importance"].values[1, 2, 1, 1, 0])) < 1e-5
    snap = run_here(capsys, "export", str(out), "--image", "0", "--out", str(tmp_path / "snap.html"))
    assert snap.returncode == 0 and (tmp_path / "snap.html").stat().st_size > 0, snap.stderr
    served_attention_is_transformers(out, model, x[1], layer=2, head=1)


def served_attention_is_transformers(out, model, x: torch.Tensor, layer: int, head: int) -> None:
    """The app on an hf: store: the Explorer loads the model through the service (no monkeypatching), and the
    Attention Pattern View's matrix of image 1 is transformers' own eager attention of that head."""
    from vitscope.app.explorer import Explorer

    ex = Explorer(out)
    ex.selection.param.update(image=1, layer=layer, head=head)
    got = ex.pattern.attention_matrix()
    assert got is not None and ex.selection.message == "", ex.selection.message
    if hasattr(model, "set_attn_implementation"):  # transformers 5: the switch is a method
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"
    with torch.no_grad():
        want = model(pixel_values=x[None], output_attentions=True).attentions[layer][0, head]
    torch.testing.assert_close(torch.as_tensor(got), want.float(), atol=1e-5, rtol=0)


def test_a_backbone_without_labels_builds_without_a_basis(tmp_path, capsys):
    """One image per class: no probe; prob/jsd NaN, the feature metrics kept; `info --model` says 0 classes."""
    from vitscope.store import open_store

    folder = save_folder(make_model("dinov2_registers"), tmp_path / "dino", BACKBONE_PROCESSORS["dinov2_registers"]())
    out = tmp_path / "s.zarr"
    res = run_cli("build", "--model", f"hf:{folder}", "--images", str(image_dir(tmp_path / "imgs", 1)), "--out",
                  str(out), "--ae-epochs", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    ds = open_store(out)
    assert ds.attrs["prob_basis"] == "none" and np.isnan(ds["importance"].values[..., 0]).all()
    assert np.isfinite(ds["importance"].values[..., 2:]).all()
    got = run_cli("ablate", str(out), "--image", "0", "--prune", "0:0")  # P[true] is undefined: one line
    assert got.returncode == 2 and "unavailable" in got.stderr and "Traceback" not in got.stderr, got.stderr
    assert len([ln for ln in got.stderr.splitlines() if ln.strip()]) == 1, got.stderr
    snap = run_here(capsys, "export", str(out), "--image", "0", "--out", str(tmp_path / "snap.html"))
    assert snap.returncode == 0 and (tmp_path / "snap.html").stat().st_size > 0, snap.stderr
    info = run_here(capsys, "info", "--model", f"hf:{folder}")
    assert info.returncode == 0 and "prefix_tokens: 5" in info.stdout and "classes: 0" in info.stdout, info.stderr


# -- (e) what is not supported: one line ------------------------------------------------------------------


def test_unsupported_families_and_bad_specs_are_one_line(tmp_path):
    beit = transformers.BeitModel(transformers.BeitConfig(**{k: v for k, v in SMALL.items() if k != "num_labels"}))
    folder = save_folder(beit, tmp_path / "beit", transformers.BeitImageProcessor())
    swin = transformers.SwinModel(transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1],
                                                          num_heads=[2]))
    with pytest.raises(UnsupportedModelError, match="SwinModel is not supported. vitscope supports transformers "
                                                    "ViTModel, .*Dinov2WithRegistersModel.*CLIPVisionModel"):
        HFViTAdapter(swin, "test:swin")
    vit = save_folder(make_model("vit"), tmp_path / "vit", transformers.ViTImageProcessor(size={"height": 32,
                                                                                                  "width": 32}))
    (tmp_path / "noproc").mkdir()
    make_model("vit").save_pretrained(tmp_path / "noproc")
    res = run_cli("info", "--model", f"hf:{folder}")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "BeitModel is not supported. vitscope supports transformers ViTModel, ViTForImageClassification" in lines[0]
    for spec, kwargs, text in [
        (f"hf:{vit}", {"checkpoint": tmp_path / "w.pth"}, "--checkpoint does not apply to hf:"),
        ("hf:someone/some-vit", {}, "not a local folder, and the hub is offline"),
        (f"hf:{tmp_path / 'missing'}", {}, "model folder not found"),
        (f"hf:{tmp_path / 'noproc'}", {}, "image processor"),
        (f"hf:{vit}", {"img_size": 32}, "timm options, not for hf:"),
    ]:
        with pytest.raises(VitscopeError, match=text) as e:
            load_model(spec, **kwargs)
        assert "\n" not in str(e.value)


# -- (d) timm → transformers ------------------------------------------------------------------------------


def test_timm_to_hf_gives_the_same_network_and_preprocessing(tmp_path):
    from conftest import small_vit

    from vitscope.models.convert import timm_to_hf

    timm_ad = small_vit("vit")
    hf_ad = load_model(f"hf:{timm_to_hf(timm_ad, tmp_path / 'hf')}")
    assert type(hf_ad.model).__name__ == "ViTForImageClassification" and hf_ad.num_classes == timm_ad.num_classes
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(hf_ad.logits(x), timm_ad.logits(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(hf_ad.features(hf_ad.run_blocks(hf_ad.embed(x), 0)),
                                   timm_ad.features(timm_ad.run_blocks(timm_ad.embed(x), 0)), atol=1e-5, rtol=0)
    pt, ph = Preprocessor(timm_ad.model).config, Preprocessor(hf_ad.model).config
    assert (list(pt["input_size"]), list(pt["mean"]), list(pt["std"]), pt["interpolation"]) == (
        ph["input_size"], ph["mean"], ph["std"], ph["interpolation"])
    assert ph["resize"] == int(32 / pt["crop_pct"]) and ph["crop_size"] == [32, 32]
    with pytest.raises(UnsupportedModelError, match="prefix tokens other than one class token") as e:
        timm_to_hf(small_vit("registers"), tmp_path / "reg")
    assert "\n" not in str(e.value)


# -- (d) the real ViT-Ti, converted from timm -------------------------------------------------------------


@pytest.mark.slow
def test_real_vit_converted_to_transformers_gives_the_timm_store(tmp_path, request):
    """`timm_to_hf` of the real ViT-Ti: the transformers store over 8 photos equals the timm store within 1e-4
    in every metric. The processor reproduces timm's geometry except transformers' floored crop offset: over
    the 200 photos, the thumbnails are equal or (when the resized long side exceeds the crop by 3 mod 4
    pixels) shifted by exactly one pixel; the photos compared are 8 with equal thumbnails. The timm store is
    conftest's `real_vit_store` (the session's, built once for the real-model tests): the 8 are the first of its
    photos with equal thumbnails, and the transformers store is built over those 8 alone (every compared
    variable is per image)."""
    if not (REAL_VIT.is_file() and REAL_IMAGES.is_dir()):
        pytest.skip(f"real ViT-Ti or photos not found under {REAL_VIT.parents[1]}")
    from vitscope.imagesets.folders import read_rgb
    from vitscope.models.convert import timm_to_hf
    from vitscope.store import open_store

    timm_ad = load_model(f"timm:{REAL_VIT_ARCH}", checkpoint=REAL_VIT)
    folder = timm_to_hf(timm_ad, tmp_path / "hf")
    hf_ad = load_model(f"hf:{folder}")
    pt, ph = Preprocessor(timm_ad.model), Preprocessor(hf_ad.model)
    equal, shifted = set(), 0
    for path in sorted(REAL_IMAGES.glob("*/*.JPEG")):
        image = read_rgb(path)
        a, b = pt(image)[1], ph(image)[1]
        if np.array_equal(a, b):
            equal.add(path.relative_to(REAL_IMAGES).as_posix())
        else:
            assert any(np.array_equal(s, t) for s, t in [(a[:, :-1], b[:, 1:]), (a[:-1], b[1:])]), path
            shifted += 1
    assert shifted < 40  # 23 of the 200
    timm_store = request.getfixturevalue("real_vit_store")
    ids = [str(i) for i in timm_store["image_id"].values]
    photos = [i for i in ids if i in equal][:8]
    assert len(photos) == 8, (len(photos), ids)
    sample = tmp_path / "photos"
    for image_id in photos:
        (sample / image_id).parent.mkdir(parents=True, exist_ok=True)
        (sample / image_id).symlink_to(REAL_IMAGES / image_id)
    out = tmp_path / "hf.zarr"
    res = run_cli("build", "--model", f"hf:{folder}", "--images", str(sample), "--out", str(out), "--ae-epochs", "1",
                  "--quiet")
    assert res.returncode == 0, res.stderr
    b = open_store(out)
    assert [str(i) for i in b["image_id"].values] == photos
    a = timm_store.isel(image=[ids.index(i) for i in photos])
    assert a.sizes["image"] == 8 and bool(a["valid"].all()) and bool(b["valid"].all())
    assert timm_store.attrs["model_spec"] == f"timm:{REAL_VIT_ARCH}"
    np.testing.assert_array_equal(a["thumbnail"].values, b["thumbnail"].values)
    np.testing.assert_array_equal(a["label"].values, b["label"].values)
    for name in ("baseline_prob", "importance", "topk_prob", "grad_importance", "strength", "strength_entropy",
                 "attention_distance", "pattern_score"):
        np.testing.assert_allclose(b[name].values, a[name].values, atol=1e-4, rtol=0, err_msg=name)
    np.testing.assert_allclose(b["cls_attention"].values.astype(np.float32),
                               a["cls_attention"].values.astype(np.float32), atol=1e-3, rtol=0)  # float16 ulp
