"""The engine against the slow reference, and the properties docs/architecture.md states."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import images_for, small_vit

from vitscope import engine
from vitscope.engine.metrics import cosine_distance, jsd, region_mask
from vitscope.engine.reference import reference_importance
from vitscope.errors import VitscopeError
from vitscope.vocab import METRICS, MODES

LABELS = torch.tensor([1, 2, 3])


@contextlib.contextmanager
def scaled_head(ad, layer: int, head: int, factor: float):
    """Multiply one head's slice of the output-projection input by `factor` (0 = pruned)."""
    dh = ad.head_dim

    def hook(module, args):
        y = args[0].clone()
        y[..., head * dh:(head + 1) * dh] *= factor
        return (y,)

    handle = ad.blocks[layer].attn.proj.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_engine_matches_reference(variant, fused):
    ad = small_vit(variant, fused=fused)
    x = images_for(ad)
    r = engine.run(ad, x, LABELS, max_batch=7)  # a chunk size that splits heads and images
    imp, tp, ti = reference_importance(ad, x, LABELS)
    assert r.modes == MODES
    assert r.importance.shape == (3, ad.num_layers, ad.num_heads, len(MODES), len(METRICS))
    torch.testing.assert_close(r.importance, imp, atol=1e-5, rtol=0)
    torch.testing.assert_close(r.topk_prob, tp, atol=1e-5, rtol=0)
    # top-k indices agree wherever the probabilities are not tied
    gap = (tp[..., :-1] - tp[..., 1:]).abs().min(-1).values > 1e-4
    assert torch.equal(r.topk_idx[gap], ti[gap])
    # the ablations must matter, or the comparison above proves nothing
    for name in METRICS[1:]:
        assert r.metric(name, 1).mean() > 1e-3, name
    assert (r.metric("prob", 1) - r.metric("prob", 0)).abs().max() > 1e-2


def test_attention_maps_match_timm_and_sum_to_one(variant):
    ad = small_vit(variant, fused=False)
    x = images_for(ad)
    seen = []
    hooks = [b.attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o)) for b in ad.blocks]
    ad.model(x)  # timm's own unfused path materialises A just before attn_drop
    for h in hooks:
        h.remove()
    for blk in ad.blocks:
        blk.attn.fused_attn = True  # ours must not depend on it
    r = engine.run(ad, x, LABELS, attention="all", modes=())
    a = r.attention.view(3, ad.num_layers, ad.num_heads, ad.num_tokens, ad.num_tokens)
    torch.testing.assert_close(a, torch.stack(seen, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)
    sel = engine.run(ad, x, LABELS, attention=[(2, 1), (0, 3)], modes=())
    assert torch.equal(sel.attention[:, 0], a[:, 2, 1]) and torch.equal(sel.attention[:, 1], a[:, 0, 3])


def test_probabilities_match_timm_forward(variant):
    ad = small_vit(variant)
    x = images_for(ad)
    r = engine.run(ad, x, LABELS, modes=())
    torch.testing.assert_close(r.probs, ad.model(x).softmax(-1), atol=1e-6, rtol=0)


def test_mode0_is_exactly_zero_and_mode1_is_zeroed_head_output():
    ad = small_vit("vit")
    x = images_for(ad)
    r = engine.run(ad, x, LABELS)
    assert torch.equal(r.metric("jsd", 0), torch.zeros(3, 3, 4))
    assert torch.equal(r.metric("cls_dist", 0), torch.zeros(3, 3, 4))
    assert torch.equal(r.metric("patch_dist", 0), torch.zeros(3, 3, 4))
    base = r.probs.gather(1, LABELS[:, None])[:, :, None]
    assert torch.equal(r.metric("prob", 0), base.expand(3, 3, 4))
    # Mode 1 equals zeroing the head's slice of the output-projection input.
    layer, head = 1, 2
    with scaled_head(ad, layer, head, 0.0):
        p = ad.model(x).softmax(-1)
    torch.testing.assert_close(r.metric("prob", 1)[:, layer, head], p.gather(1, LABELS[:, None])[:, 0],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(r.topk_prob[:, layer, head, 1], p.topk(5).values, atol=1e-6, rtol=0)


def test_jsd_properties():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, 10, generator=g).softmax(-1)
    q = (torch.rand(50, 10, generator=g) * 8).softmax(-1)
    d = jsd(p, q)
    torch.testing.assert_close(d, jsd(q, p))
    assert (d >= 0).all() and (d <= 1).all() and (d > 0).all()
    assert torch.equal(jsd(p, p), torch.zeros(50))
    one_hot = torch.eye(10)
    torch.testing.assert_close(jsd(one_hot[:1], one_hot[1:2]), torch.ones(1))  # disjoint support → 1 bit
    # against a direct float64 formula
    p64, q64 = p.double(), q.double()
    m = (p64 + q64) / 2
    ref = 0.5 * (p64 * (p64 / m).log2()).sum(-1) + 0.5 * (q64 * (q64 / m).log2()).sum(-1)
    torch.testing.assert_close(d.double(), ref, atol=1e-6, rtol=0)


def test_cosine_distance():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    b = torch.tensor([[0.0, 2.0], [-1.0, -1.0], [3.0, 4.0]])
    torch.testing.assert_close(cosine_distance(a, b), torch.tensor([1.0, 2.0, 0.0]))
    x = torch.randn(20, 8)
    y = torch.randn(20, 8)
    torch.testing.assert_close(cosine_distance(x, y), 1 - torch.cosine_similarity(x, y, dim=-1), atol=1e-6, rtol=0)


def test_region_masks_partition_attention():
    P, n = 6, 2
    m = {k: region_mask(k, P, n) for k in MODES}
    assert not m[0].any() and m[1].all()
    assert m[2].sum() == n * n and m[2][:n, :n].all()
    assert m[3].sum() == 2 * n * (P - n) and m[3][:n, n:].all() and m[3][n:, :n].all()
    assert torch.equal(m[4], m[2] | m[3])
    assert torch.equal(m[5], ~m[4]) and m[5][n:, n:].all()
    with pytest.raises(ValueError):
        region_mask(max(MODES) + 1, P, n)


def test_gradient_importance_matches_finite_differences():
    ad = small_vit("deit_distilled")
    ad.model.double()
    x = images_for(ad, 2).double()
    labels = torch.tensor([4, 7])
    g = engine.gradient_importance(ad, x, labels)
    assert g.shape == (2, ad.num_layers, ad.num_heads)
    eps = 1e-6
    for b in range(2):
        for layer, head in [(0, 0), (1, 3), (2, 2)]:
            losses = []
            for sign in (1, -1):
                with scaled_head(ad, layer, head, 1 + sign * eps):
                    logits = ad.model(x[b:b + 1])
                losses.append(torch.nn.functional.cross_entropy(logits, labels[b:b + 1]).item())
            fd = abs(losses[0] - losses[1]) / (2 * eps)
            assert g[b, layer, head].item() == pytest.approx(fd, rel=1e-4, abs=1e-8)
    assert g.max() > 1e-3


def test_bfloat16_stays_close_to_float32():
    ad = small_vit("vit")
    x = images_for(ad)
    seen = []  # the dtype each MLP's first layer computed in, every forward
    hooks = [b.mlp.fc1.register_forward_hook(lambda m, i, out: seen.append(out.dtype)) for b in ad.model.blocks]
    try:
        exact = engine.run(ad, x, LABELS)
        assert set(seen) == {torch.float32}
        seen.clear()
        fast = engine.run(ad, x, LABELS, precision="bfloat16")
    finally:
        for h in hooks:
            h.remove()
    assert torch.bfloat16 in seen and torch.float32 in seen  # the ablated blocks in bf16, the baseline not
    assert fast.importance.dtype == torch.float32 and fast.probs.dtype == torch.float32
    torch.testing.assert_close(fast.probs, exact.probs)  # the unpruned pass is always float32
    err = (fast.importance - exact.importance).abs()
    assert err[..., 0].max() < 0.03 and err[..., 1].max() < 0.03  # prob, jsd: bf16 error, bounded
    # and it is bf16's error: far above float32's (the engine matches timm at 1e-5 in float32)
    assert err[..., 0].max() > 1e-4 and err[..., 1].max() > 1e-4
    torch.testing.assert_close(fast.importance[..., 2:], exact.importance[..., 2:])  # z' is float32


def test_subset_of_layers_and_modes_and_repeatable():
    ad = small_vit("registers")
    x = images_for(ad)
    full = engine.run(ad, x, LABELS)
    part = engine.run(ad, x, LABELS, layers=[1], modes=[5, 2])
    assert part.modes == (0, 2, 5)
    torch.testing.assert_close(part.importance[:, 1], full.importance[:, 1][:, :, [0, 2, 5]])
    assert part.importance[:, [0, 2], :, 1:].isnan().all()  # mode 0 (unpruned) is defined everywhere
    again = engine.run(ad, x, LABELS)
    assert torch.equal(again.importance, full.importance)  # no state leaks between calls
    assert all("forward" not in vars(b.attn) for b in ad.blocks)
    torch.testing.assert_close(ad.model(x).softmax(-1), full.probs, atol=1e-6, rtol=0)


def test_default_labels_and_bad_arguments():
    ad = small_vit("vit")
    x = images_for(ad)
    r = engine.run(ad, x, modes=[1])
    assert torch.equal(r.labels, r.probs.argmax(-1))
    for kwargs, text in [
        (dict(modes=[7]), "modes"),
        (dict(layers=[3]), "layers"),
        (dict(attention=[(0, 4)]), "out of range"),
        (dict(precision="fp8"), "precision"),
        (dict(labels=torch.tensor([0, 1, 10])), "class indices"),
    ]:
        with pytest.raises(VitscopeError, match=text):
            engine.run(ad, x, **kwargs)
