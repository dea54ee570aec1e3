"""The real pretrained DeiT-Ti/16 on real ImageNet photos, as a classifier and as a backbone with a linear probe on
coarse labels: its preprocessing, its accuracy, its sink finding, and the probe and feature metrics of the backbone
store checked against plain timm forwards. Skips when ../shared is absent.

The checkpoint's 25 LayerNorm weight/bias pairs are rounded to steps of 1/32–1/64 (every other tensor is the
original): a faithful DeiT-Ti, not bit-identical to the official file. Figures in the docstrings: all 200 photos
(docs/models.md); this module's sample in brackets (8 photos, seed 0, of test_real_model.py's 16, so that
test_real_compare.py can compare the two stores).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_DEIT, REAL_DEIT_ARCH, REAL_DEIT_PHOTOS, REAL_IMAGES, REAL_SEED, build_real
from PIL import Image

if not (REAL_DEIT.is_file() and REAL_IMAGES.is_dir()):
    pytest.skip(f"real DeiT-Ti or photos not found under {REAL_DEIT.parents[1]}", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from coarse_labels import TWO, coarse_rows  # noqa: E402

# Two builds of every head of every image pruned in every mode (~3.6 CPU-s an image each) are ~90 % of the module.
# The classifier store is tests/conftest.py's `real_deit_store` (built once a session, shared with
# test_real_compare.py): REAL_DEIT_PHOTOS (8) of the ViT-Ti's REAL_PHOTOS (16) photos, sampled with seed REAL_SEED.
SAMPLE = REAL_DEIT_PHOTOS  # photos of the classifier store (5 animals, 3 objects); the backbone store takes the same
SEED = REAL_SEED


@pytest.fixture(scope="module")
def deit_store(real_deit_store):
    assert int(real_deit_store["valid"].sum()) == SAMPLE
    return real_deit_store


@pytest.fixture(scope="module")
def headless(tmp_path_factory) -> Path:
    """The checkpoint without `head.*`: a backbone."""
    from safetensors.torch import load_file, save_file

    path = tmp_path_factory.mktemp("headless") / "deit_headless.safetensors"
    save_file({k: v for k, v in load_file(str(REAL_DEIT)).items() if not k.startswith("head.")}, str(path))
    return path


@pytest.fixture(scope="module")
def backbone_store(deit_store, headless, tmp_path_factory):
    """The same photos as `deit_store` through the headless checkpoint, labelled animal / object by their ImageNet
    class index (benchmarks/coarse_labels.py --two): a backbone store with a linear probe."""
    from vitscope.build import BuildConfig

    folder = tmp_path_factory.mktemp("backbone")
    labels = folder / "coarse.csv"
    rows = coarse_rows(REAL_IMAGES, [str(i) for i in deit_store["image_id"].values], two=True)
    counts = {g: sum(r[1] == g for r in rows) for g in TWO}
    assert min(counts.values()) >= 2, counts  # the sample can train a probe (else pick another SEED)
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    cfg = BuildConfig(model=f"timm:{REAL_DEIT_ARCH}", checkpoint=headless, images=str(REAL_IMAGES), labels=labels,
                      out=folder / "backbone.zarr", seed=SEED, ae_epochs=1, progress=False)
    ds = build_real(cfg)
    assert [str(i) for i in ds["image_id"].values] == [str(i) for i in deit_store["image_id"].values]
    ds.attrs["coarse"] = json.dumps([r[1] for r in rows])  # in memory only
    return ds


def timm_inputs(ds, model) -> torch.Tensor:
    """The store's photos through timm's own eval transform of `model`'s data config."""
    from timm.data import create_transform, resolve_data_config

    tf = create_transform(**resolve_data_config({}, model=model))
    return torch.stack([tf(Image.open(REAL_IMAGES / i).convert("RGB")) for i in ds["image_id"].values])


def timm_model(checkpoint: Path, **kwargs) -> torch.nn.Module:
    import timm
    from safetensors.torch import load_file

    model = timm.create_model(REAL_DEIT_ARCH, pretrained=False, **kwargs)
    model.load_state_dict(load_file(str(checkpoint)))
    return model.eval()


# -- the classifier ----------------------------------------------------------------------------


def test_preprocessing_follows_timm_data_config(deit_store):
    """DeiT-Ti's timm data config is ImageNet's mean/std and bicubic (the ViT-Ti's: mean = std = 0.5), with timm's
    crop of 0.9 (DeiT's own evaluation cropped 224 of 256, 0.875): the store keeps that config, what the model saw
    equals timm's eval transform to 1e-4, and the store's unpruned predictions equal a timm forward."""
    from timm.data import resolve_data_config

    from vitscope.imagesets.folders import normalise

    ds = deit_store
    model = timm_model(REAL_DEIT)
    cfg = resolve_data_config({}, model=model)
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225), cfg
    assert cfg["interpolation"] == "bicubic", cfg
    stored = json.loads(ds.attrs["data_config"])
    for key in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"):
        assert tuple(np.atleast_1d(stored[key])) == tuple(np.atleast_1d(cfg[key])), key
    x = timm_inputs(ds, model)
    seen = normalise(ds["thumbnail"].values, cfg["mean"], cfg["std"])
    assert float((seen - x).abs().max()) <= 1e-4
    with torch.no_grad():
        probs = model(x).softmax(-1)
    top = probs.max(-1)
    np.testing.assert_array_equal(ds["topk_idx"].values[:, 0, 0, 0, 0], top.indices.numpy())
    np.testing.assert_allclose(ds["topk_prob"].values[:, 0, 0, 0, 0], top.values.numpy(), atol=1e-4)
    true = probs.gather(1, torch.as_tensor(ds["label"].values)[:, None])[:, 0]
    np.testing.assert_allclose(ds["baseline_prob"].values, true.numpy(), atol=1e-4)


def test_top1_accuracy(deit_store):
    """WordNet folders map to the model's class indices: top-1 0.805 on 200 photos, 6 of 8 on the sample (DeiT-Ti on
    ImageNet-1k val: 72.2 %). Top-1 does not see the preprocessing on this model (200 photos: crop 0.875 0.80, mean =
    std = 0.5 0.815, bilinear 0.805), so the test above compares inputs and outputs exactly."""
    ds = deit_store
    top1 = (ds["topk_idx"].values[:, 0, 0, 0, 0] == ds["label"].values).mean()
    assert top1 >= 0.6


# -- the backbone and its probe -----------------------------------------------------------------


def test_backbone_probe_is_softmax_of_its_map_on_timm_features(backbone_store, headless):
    """The headless checkpoint builds as a backbone with a linear probe on the class token after the final norm; the
    store's unpruned probabilities are softmax(W f + b) of its stored map on the features of a plain timm forward of
    the headless model (num_classes=0), and its labels are the coarse groups of the photos' classes."""
    ds = backbone_store
    assert ds.attrs["prob_basis"] == "linear probe"
    assert ds.attrs["probe_feature"] == "class token after the final norm"
    assert [str(c) for c in ds["class_name"].values] == sorted(TWO)
    assert [str(c) for c in ds["class_name"].values[ds["label"].values]] == json.loads(ds.attrs["coarse"])
    model = timm_model(headless, num_classes=0)
    with torch.no_grad():
        f = model(timm_inputs(ds, model)).double().numpy()  # [N, 192]: forward_head(pre_logits) of the class token
    coef, bias = ds["probe_coef"].values.astype(np.float64), ds["probe_bias"].values.astype(np.float64)
    assert coef.shape == (len(TWO), f.shape[1])
    z = f @ coef.T + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    label = ds["label"].values
    np.testing.assert_allclose(ds["baseline_prob"].values, p[np.arange(len(p)), label], atol=1e-4)
    np.testing.assert_array_equal(ds["topk_idx"].values[:, 0, 0, 0, 0], p.argmax(1))
    np.testing.assert_allclose(ds["topk_prob"].values[:, 0, 0, 0, 0], p.max(1), atol=1e-4)
    assert 0 <= ds.attrs["probe_cv_accuracy"] <= 1


def test_backbone_feature_metrics_equal_the_classifiers(deit_store, backbone_store):
    """cls_dist and patch_dist compare a layer's attention output with and without the pruning, which the head does
    not touch: the backbone store's equal the classifier store's for every image, head and mode, as do strength,
    patterns, head kinds and sinks; prob and jsd differ (another head)."""
    a, b = deit_store, backbone_store
    feature = [list(a["metric"].values).index(m) for m in ("cls_dist", "patch_dist")]
    ia, ib = a["importance"].values[..., feature], b["importance"].values[..., feature]
    assert float(np.abs(ia).max()) > 0.01  # not vacuous: pruning changes the features
    np.testing.assert_allclose(ib, ia, rtol=0, atol=1e-6)
    for name in ("strength", "attention_distance", "pattern_label", "head_kind", "sink_token", "norm_token"):
        np.testing.assert_array_equal(b[name].values, a[name].values, err_msg=name)
    prob = list(a["metric"].values).index("prob")
    assert not np.allclose(a["importance"].values[..., prob], b["importance"].values[..., prob])


# -- attention sinks: the finding that sets the two recipes apart ---------------------------------


def test_no_sink_heads_and_no_high_norm_patches(deit_store):
    """The ViT-Ti's layers 9–11 are sink heads on the four corner patches, whose norms reach 28–46× the median patch's
    (tests/test_real_model.py). DeiT-Ti has neither. 200 photos, in brackets the sample: no head puts more than 12 %
    [29 %: fewer maps pooled] of its maps' 1s on its 4 most-hit patches (ViT-Ti ≥ 93 %); from layer 4 on no patch is
    among a photo's 4 most attended in more than 22 % [4 of 8] of the photos (ViT-Ti: the corners in 97–100 % from
    layer 8 on); the largest block output is at most 2.2× [2.2×] the median patch's; the late "vertical" heads are
    content heads, layers 4–11: 24 [23] of 24, as the paper reads them; the class token keeps 8–21 % [7–20 %] of the
    patches' attention in layers 8–11 (ViT-Ti: 1–5 %). Every assertion fails on the ViT-Ti."""
    from vitscope.vocab import HEAD_KINDS

    ds = deit_store
    valid = ds["valid"].values
    kind, share = ds["head_kind"].values, ds["head_sink_share"].values  # [L, H]
    assert (kind != HEAD_KINDS.index("sink")).all() and share.max() <= 0.5, (kind, share)
    assert ds["sink_frequency"].values[4:].max() <= 0.6, ds["sink_frequency"].values
    ratio = ds["norm_ratio"].values[valid].astype(float)[..., 0].mean(0)  # [L] largest / median patch norm
    assert ratio.max() <= 5, ratio
    assert (kind[4:] == HEAD_KINDS.index("content")).sum() >= 20, kind
    cls = ds["prefix_share"].values[valid].astype(float)[..., 0].mean(0)  # [L]
    assert (cls[8:] >= 0.04).all(), cls
