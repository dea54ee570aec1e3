"""Head consistency (agreement of a head's binarised maps across images) against a pairwise loop."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from vitscope.analysis.binary import binarise, pack_binary
from vitscope.analysis.consistency import CONTENT_BELOW, POSITIONAL_ABOVE, head_consistency, head_kinds
from vitscope.vocab import HEAD_KINDS


def pairwise_reference(maps: np.ndarray) -> float:
    """Chance-corrected mean over ordered pairs i ≠ j of |B_i ∩ B_j| / mean |B|, written as a plain loop."""
    n = len(maps)
    shared = sum(np.logical_and(maps[i], maps[j]).sum() for i, j in itertools.permutations(range(n), 2))
    overlap = shared / (n * (n - 1) * maps.sum(axis=(1, 2)).mean())
    rho = maps.mean()
    return float(np.clip((overlap - rho) / (1 - rho), 0, 1))


def test_matches_the_pairwise_loop_on_packed_maps():
    g = torch.Generator().manual_seed(0)
    n, layers, heads, side = 7, 2, 3, 16
    attn = torch.rand(n, layers, heads, side, side, generator=g)
    attn[:, 0, 0] += 5 * torch.eye(side)  # a positional head: the same diagonal in every image
    attn[:, 1, 2, :, 3] += 2.0  # a sink column shared by all images
    binary = binarise(attn, 0.05)  # exactly ceil(5 % · 256) = 13 ones per map
    index = pack_binary(binary, side, 13)
    c = head_consistency(index, side)
    ref = np.array([[pairwise_reference(binary[:, i, h].numpy()) for h in range(heads)] for i in range(layers)])
    np.testing.assert_allclose(c, ref, rtol=1e-5, atol=1e-6)
    # 13 of the same 16 cells in every image agree at ≈ 13/16; independent noise at ≈ 0
    assert c[0, 0] > 0.7 and c[1, 2] > 0.7 and c[0, 1] < 0.1


def test_pooled_maps_count_each_one_once():
    # maps pooled to a smaller side have fewer 1s than indices: the padding repeats an index, counted once
    g = torch.Generator().manual_seed(1)
    binary = binarise(torch.rand(5, 1, 1, 40, 40, generator=g), 0.02)  # 32 ones per 40 × 40 map
    index = pack_binary(binary, 8, 32)  # pooled to 8 × 8: duplicates
    from vitscope.analysis.binary import unpack_binary

    dense = unpack_binary(index, 8).numpy()  # [5, 1, 1, 8, 8]
    np.testing.assert_allclose(head_consistency(index, 8)[0, 0], pairwise_reference(dense[:, 0, 0]), rtol=1e-5)


def test_kinds_follow_the_cuts():
    c = np.array([[POSITIONAL_ABOVE, CONTENT_BELOW, CONTENT_BELOW - 1e-3, np.nan]], np.float32)
    kinds = [HEAD_KINDS[k] if k >= 0 else None for k in head_kinds(c)[0]]
    assert kinds == ["positional", "mixed", "content", None]
    assert np.isnan(head_consistency(np.zeros((1, 2, 2, 4), np.uint16), 4)).all()  # one image: undefined
