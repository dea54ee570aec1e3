"""Attention sinks, high-norm tokens and sink heads (vitscope.analysis.sinks) against plain loops, and on maps
built so that the answer is known: every map pointing at 3 fixed columns is a sink head, diagonal maps are
positional and not sinks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitscope.analysis.binary import binarise, pack_binary, top_count
from vitscope.analysis.consistency import head_consistency, head_kinds
from vitscope.analysis.sinks import (
    SINK_RANKS,
    SINK_SHARE,
    frequent_tokens,
    head_sink,
    image_sinks,
    sink_kinds,
)
from vitscope.vocab import HEAD_KINDS, prefix_names


def random_attention(b: int, layers: int, heads: int, tokens: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(b, layers, heads, tokens, tokens, generator=g)).softmax(-1)


def image_sinks_reference(attn: np.ndarray, norms: np.ndarray, n: int, r: int) -> dict[str, np.ndarray]:
    """image_sinks written as loops over images, layers and tokens."""
    b, layers, heads, tokens, _ = attn.shape
    out = {k: [] for k in ("sink_token", "sink_share", "prefix_share", "norm_token", "norm_ratio")}
    for i in range(b):
        rows = {k: [] for k in out}
        for layer in range(layers):
            got = np.zeros(tokens)
            for t in range(tokens):
                for h in range(heads):
                    for q in range(n, tokens):
                        got[t] += attn[i, layer, h, q, t]
            got /= heads * (tokens - n)
            patches = sorted(range(tokens - n), key=lambda p: -got[n + p])[:r]
            rows["sink_token"].append(patches)
            rows["sink_share"].append([got[n + p] for p in patches])
            rows["prefix_share"].append(list(got[:n]))
            by_norm = sorted(range(tokens - n), key=lambda p: -norms[i, layer, n + p])[:r]
            median = np.median(norms[i, layer, n:])
            rows["norm_token"].append(by_norm)
            rows["norm_ratio"].append([norms[i, layer, n + p] / median for p in by_norm])
        for k in out:
            out[k].append(rows[k])
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("n", [1, 2, 5])  # class token; + distillation; + 4 registers
def test_image_sinks_match_the_loops(n):
    grid = 4
    attn = random_attention(3, 2, 3, n + grid * grid, seed=n)
    norms = torch.rand(3, 2, n + grid * grid, generator=torch.Generator().manual_seed(7)) + 0.5
    got = image_sinks(attn, norms, n)
    ref = image_sinks_reference(attn.double().numpy(), norms.double().numpy(), n, SINK_RANKS)
    for k in ("sink_token", "norm_token"):
        np.testing.assert_array_equal(got[k].numpy(), ref[k], err_msg=k)
    for k in ("sink_share", "prefix_share", "norm_ratio"):
        np.testing.assert_allclose(got[k].numpy(), ref[k], rtol=1e-5, err_msg=k)
    # the shares are of all the patches' attention: the prefix and every patch together make 1
    total = got["prefix_share"].sum(-1) + attn[..., n:, n:].float().mean(dim=(2, 3)).sum(-1)
    np.testing.assert_allclose(total.numpy(), 1, rtol=1e-5)


def test_image_sinks_find_a_planted_sink_and_a_high_norm_patch():
    n, grid = 1, 3
    attn = random_attention(2, 1, 2, n + grid * grid)
    attn[:, :, :, n:, n + 5] += 4.0  # every patch query looks at patch 5 (row 1, column 2)
    attn = attn / attn.sum(-1, keepdim=True)
    norms = torch.ones(2, 1, n + grid * grid)
    norms[:, :, n + 7] = 30.0
    got = image_sinks(attn, norms, n)
    assert (got["sink_token"][..., 0] == 5).all() and (got["sink_share"][..., 0] > 0.5).all()
    assert (got["norm_token"][..., 0] == 7).all()
    np.testing.assert_allclose(got["norm_ratio"][..., 0].numpy(), 30.0)


def head_sink_reference(index: np.ndarray, size: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """head_sink as loops: per head, count each map's distinct 1s by target column, pooled over the maps."""
    m, layers, heads, _ = index.shape
    share, tokens = np.zeros((layers, heads)), np.zeros((layers, heads, r), int)
    for layer in range(layers):
        for h in range(heads):
            counts = [0] * size
            for i in range(m):
                for e in set(int(v) for v in index[i, layer, h]):
                    counts[e % size] += 1
            top = sorted(range(size), key=lambda t: (-counts[t], t))[:r]
            share[layer, h] = sum(counts[t] for t in top) / sum(counts)
            tokens[layer, h] = top
    return share, tokens


def test_head_sink_matches_the_loop_on_random_and_pooled_maps():
    g = torch.Generator().manual_seed(3)
    attn = torch.rand(6, 2, 3, 9, 9, generator=g)
    attn[:, 1, 0, :, 4] += 1.0  # a sink column
    maps = binarise(attn, 0.05)
    index = pack_binary(maps, 9, top_count(0.05, 9))
    share, tokens = head_sink(index, 9)
    ref_share, ref_tokens = head_sink_reference(index, 9, SINK_RANKS)
    np.testing.assert_allclose(share, ref_share, rtol=1e-6)
    np.testing.assert_array_equal(tokens, ref_tokens)
    assert tokens[1, 0, 0] == 4 and share[1, 0] == 1.0
    # maps pooled to a smaller side repeat an index as padding: counted once, like head_consistency
    pooled = pack_binary(binarise(torch.rand(4, 1, 2, 20, 20, generator=g), 0.02), 8, top_count(0.02, 20))
    np.testing.assert_allclose(head_sink(pooled, 8)[0], head_sink_reference(pooled, 8, SINK_RANKS)[0], rtol=1e-6)
    assert np.isnan(head_sink(index[:0], 9)[0]).all()


def test_frequent_tokens_match_a_count():
    rng = np.random.default_rng(0)
    tokens = np.stack([[rng.choice(12, 4, replace=False) for _ in range(3)] for _ in range(20)])  # [20, 3, 4]
    for i in range(15):  # patch 11 among layer 1's top in 15 images (each row's patches stay distinct)
        tokens[i, 1] = [11, *rng.choice(11, 3, replace=False)]
    got, freq = frequent_tokens(tokens, 12)
    for layer in range(3):
        counts = {t: sum(t in tokens[i, layer] for i in range(20)) for t in range(12)}
        best = sorted(counts, key=lambda t: (-counts[t], t))[:SINK_RANKS]
        assert got[layer].tolist() == best
        np.testing.assert_allclose(freq[layer], [counts[t] / 20 for t in best])
    assert got[1, 0] == 11 and freq[1, 0] >= 0.75
    none, nofreq = frequent_tokens(np.full((0, 2, 4), -1), 12)
    assert (none == -1).all() and np.isnan(nofreq).all()


def kinds_of(attn: torch.Tensor, size: int, top: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kinds, sink shares, consistency) [L, H] as the build computes them from maps [M, L, H, N, N]."""
    index = pack_binary(binarise(attn, top), size, top_count(top, size))
    agree = head_consistency(index, size)
    share, _ = head_sink(index, size)
    return sink_kinds(head_kinds(agree), share), share, agree


def test_three_fixed_columns_make_a_sink_head_and_a_diagonal_stays_positional():
    """On a 14 × 14 grid (196 patches, 385 ones per top-1 % map): head 0 attends 3 fixed target patches from random
    queries in 12 images, head 1 the patch itself (a perfect diagonal), head 2 noise, head 3 3 columns too but
    other ones in each image (content: a sink needs the same tokens in every image)."""
    g = torch.Generator().manual_seed(0)
    n, m = 196, 12
    attn = torch.rand(m, 1, 4, n, n, generator=g)
    attn[:, 0, 0, :, [0, 13, 195]] += 1.0
    attn[:, 0, 1] += 2.0 * torch.eye(n)
    for i in range(m):
        attn[i, 0, 3, :, torch.randperm(n, generator=g)[:3]] += 1.0
    kinds, share, agree = kinds_of(attn, n)
    names = [HEAD_KINDS[k] for k in kinds[0]]
    assert names == ["sink", "positional", "content", "content"], (names, share, agree)
    assert share[0, 0] == 1.0 and share[0, 1] < 0.1 and share[0, 3] < 0.5
    # without the sink rule the sink head is positional (its 1s fill 385 of the 588 cells of 3 columns): it replaces
    # positional there, and the diagonal keeps it
    assert [HEAD_KINDS[k] for k in head_kinds(agree)[0]][:3] == ["positional", "positional", "content"], agree


def test_sink_share_cut_and_undefined_kinds():
    kind = np.array([[0, 1, 2, -1, 0]], np.int8)
    share = np.array([[SINK_SHARE, SINK_SHARE, SINK_SHARE - 1e-3, 1.0, np.nan]], np.float32)
    got = [HEAD_KINDS[k] if k >= 0 else None for k in sink_kinds(kind, share)[0]]
    assert got == ["sink", "sink", "mixed", None, "positional"]
    assert HEAD_KINDS[:3] == ("positional", "content", "mixed")  # codes of older stores keep their meaning


def test_prefix_names():
    assert prefix_names(1) == ["cls"]
    assert prefix_names(2) == ["cls", "dist"]
    assert prefix_names(5, 4) == ["cls", "reg0", "reg1", "reg2", "reg3"]
    with pytest.raises(ValueError):
        prefix_names(1, 1)


@pytest.mark.parametrize("variant", ["vit", "registers"])
def test_engine_token_norms_are_timm_block_outputs(variant):
    """The engine's `token_norm` [B, L, P] is ‖x‖ of every token after each block of timm's own forward."""
    from conftest import images_for, small_vit

    from vitscope import engine

    adapter = small_vit(variant)
    x = images_for(adapter, 2)
    outs = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: outs.append(o.norm(dim=-1))) for b in adapter.model.blocks]
    try:
        with torch.inference_mode():
            adapter.model(x)
    finally:
        for h in hooks:
            h.remove()
    res = engine.run(adapter, x, modes=())
    np.testing.assert_allclose(res.token_norm.numpy(), torch.stack(outs, 1).numpy(), rtol=1e-5)
