"""Loading models by spec, and one clear line for every bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
from conftest import SMALL

from vitscope.errors import UnsupportedModelError, VitscopeError
from vitscope.models import check_supported, load_model


def test_demo_model_shape():
    ad = load_model("demo")
    d = ad.describe()
    assert (d["layers"], d["heads"], d["prefix_tokens"], d["patch_grid"], d["classes"]) == (6, 4, 1, "8x8", 10)
    assert ad.head_rows == 1


def test_timm_spec_with_kwargs_and_prefix_tokens():
    ad = load_model("timm:deit_tiny_distilled_patch16_224", **SMALL)
    assert (ad.num_layers, ad.num_heads, ad.num_prefix, ad.grid, ad.num_tokens) == (3, 4, 2, 4, 18)
    reg = load_model("timm:vit_small_patch14_reg4_dinov2", img_size=28, patch_size=7, depth=2)
    assert reg.num_prefix == 5 and reg.grid == 4


@pytest.mark.parametrize("spec,text", [
    ("timm:resnet18", "not a timm VisionTransformer"),
    ("timm:vit_medium_patch16_gap_256", "no class token"),
    ("timm:vit_relpos_small_patch16_224", "not a timm VisionTransformer"),
])
def test_unsupported_models_say_what_is_supported(spec, text):
    with pytest.raises(UnsupportedModelError, match=text) as e:
        load_model(spec)
    assert "vit_*" in str(e.value) and "\n" not in str(e.value)


def test_other_attention_classes_are_refused():
    model = timm.create_model("vit_tiny_patch16_224", **SMALL)
    model.blocks[1].attn = torch.nn.Identity()
    with pytest.raises(UnsupportedModelError, match="attention is Identity"):
        check_supported(model)


@pytest.mark.parametrize("spec,text", [
    ("timm:vit_base_patch16_2244", "unknown timm model 'vit_base_patch16_2244'.*vit_base_patch16_224"),
    ("resnet", "unknown model spec 'resnet'"),
    ("vit_base_patch16_224", "Did you mean 'timm:vit_base_patch16_224'"),
])
def test_unknown_names(spec, text):
    with pytest.raises(VitscopeError, match=text):
        load_model(spec)


def test_checkpoint_round_trip_infers_num_classes(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("vit_tiny_patch16_224", **{**SMALL, "num_classes": 7})
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "m.pth")
    save_file(src.state_dict(), str(tmp_path / "m.safetensors"))
    x = torch.randn(2, 3, 32, 32)
    kwargs = {k: v for k, v in SMALL.items() if k != "num_classes"}
    for name in ("m.pth", "m.safetensors"):
        ad = load_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / name, **kwargs)
        assert ad.num_classes == 7
        torch.testing.assert_close(ad.model(x), src.eval()(x))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(VitscopeError, match="checkpoint not found"):
        load_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(VitscopeError, match="cannot read checkpoint"):
        load_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "junk.pth")
    other = timm.create_model("vit_tiny_patch16_224", **{**SMALL, "depth": 2})
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(VitscopeError, match="does not fit timm:vit_small_patch16_224.*shape mismatches"):
        load_model("timm:vit_small_patch16_224", checkpoint=tmp_path / "other.pth", img_size=32, patch_size=8)


def test_cuda_request_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine with CUDA runs it too, never skips
    with pytest.raises(VitscopeError, match="CUDA is not available"):
        load_model("demo", device="cuda")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitscope.cli", *args], capture_output=True, text=True, timeout=300,
                          env=None if env is None else {**os.environ, **env})


def test_cli_errors_are_one_line():
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-vitscope-test"}  # never touches the network
    for args in (["info", "--model", "timm:resnet18"], ["info", "--model", "timm:nope"],
                 ["info", "--model", "demo", "--checkpoint", "/nonexistent/w.pth"],
                 ["info", "--model", "timm:vit_tiny_patch16_224", "--pretrained"]):
        out = run_cli(*args, env=offline)
        assert out.returncode == 2, out
        assert "Traceback" not in out.stderr
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("vitscope info: error:"), out.stderr


def test_cli_info():
    out = run_cli("info", "--model", "demo")
    assert out.returncode == 0, out.stderr
    assert "layers: 6" in out.stdout and "patch_grid: 8x8" in out.stdout


def test_cli_info_store_prints_the_proxy_agreement_and_class_trends(tmp_path):
    import numpy as np
    from app_helpers import make_store

    from vitscope.analysis.proxy import summary_lines
    from vitscope.classes import class_report
    from vitscope.store import open_store

    path = make_store(tmp_path / "s.zarr", 24, 2, 3, 4, 4, unreadable=(1,))
    ds = open_store(path)
    a = {k: ds[k].values for k in ("label", "valid", "baseline_prob", "importance", "topk_idx", "strength_entropy",
                                    "grad_importance")}
    valid = a["valid"].astype(bool)
    out = run_cli("info", str(path))
    assert out.returncode == 0, out.stderr
    for line in summary_lines(a["importance"], a["baseline_prob"], a["grad_importance"], valid):
        assert line in out.stdout
    cls = int(a["label"][valid][0])
    name = str(ds["class_name"].values[cls])
    out = run_cli("info", str(path), "--class", name.upper(), "--top", "4")
    assert out.returncode == 0, out.stderr
    r = class_report(cls, a["label"], valid, a["baseline_prob"], a["importance"], a["topk_idx"],
                     a["strength_entropy"], top=4)
    assert f"class {name!r} (index {cls}): {r.images} images, unpruned top-1 accuracy {r.accuracy:.1%}" in out.stdout
    rows = [ln.split() for ln in out.stdout.splitlines() if ln.strip().startswith("L") and "±" in ln]
    assert [row[0] for row in rows] == [h.name for h in r.heads]
    for row, h in zip(rows, r.heads, strict=True):
        assert (float(row[1]), float(row[3]), float(row[4]), int(row[5])) == (
            round(h.drop_mean, 4), round(h.drop_std, 4), round(h.jsd_mean, 4), h.flips)
    for layer in r.layers:
        assert f"layer {layer.layer:>2}: {layer.entropy_class:.3f} / {layer.entropy_all:.3f}" in out.stdout
    mine = valid & (a["label"] == cls)
    assert summary_lines(a["importance"], a["baseline_prob"], a["grad_importance"], mine)[1] in out.stdout
    assert np.isfinite([h.drop_mean for h in r.heads]).all()


def test_cli_info_unknown_class_is_one_line_with_close_names(tmp_path):
    from app_helpers import make_store

    path = make_store(tmp_path / "s.zarr", 12, 1, 2, 2, 3)
    out = run_cli("info", str(path), "--class", "clas 7")
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "vitscope info: error: no class matches 'clas 7' among the store's 3 classes; close: 'class 2', "
        "'class 1', 'class 0'"]
    out = run_cli("info", "--model", "demo", "--class", "x")
    assert out.returncode == 2 and "--class needs a STORE" in out.stderr
