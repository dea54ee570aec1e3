"""CLS attention vectors (analysis.cls) and binarised patch attention (analysis.binary)."""

from __future__ import annotations

import math

import numpy as np
import torch

from vitscope.analysis.binary import binarise
from vitscope.analysis.cls import cls_attention_vector


def test_cls_vector_layout_with_one_and_more_prefix_tokens():
    p = 3
    for n in (1, 2, 5):
        P = n + p * p
        a = torch.arange(P * P, dtype=torch.float32).view(P, P)
        v = cls_attention_vector(a[None, None], n)[0, 0]
        assert v.shape == (2 * p * p + 1,)
        assert v[0] == a[0, 0]  # CLS→CLS
        assert torch.equal(v[1:1 + p * p], a[0, n:])  # CLS→patches
        assert torch.equal(v[1 + p * p:], a[n:, 0])  # patches→CLS


def test_binarise_keeps_exactly_the_top_values():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 3, 49, 49, generator=g)
    for top in (0.01, 0.05):
        b = binarise(maps, top)
        k = math.ceil(top * 49 * 49)
        assert b.dtype == torch.bool and (b.sum((-1, -2)) == k).all()
        flat = maps.flatten(-2)
        threshold = flat.sort(-1, descending=True).values[..., k - 1:k]  # the k-th largest value
        assert torch.equal(b.flatten(-2), flat >= threshold)
    assert binarise(torch.rand(1, 2, 2), 0.01).sum() == 1  # at least one entry


def test_pack_binary_round_trips_and_pools():
    from vitscope.analysis.binary import downsample_binary, pack_binary, unpack_binary

    g = torch.Generator().manual_seed(4)
    b = binarise(torch.rand(2, 3, 36, 36, generator=g), 0.01)  # 13 ones each
    index = pack_binary(b, 36, 13)
    assert index.dtype == np.uint16 and index.shape == (2, 3, 13)
    assert (np.diff(index.astype(int), axis=-1) > 0).all()  # sorted, one index per 1
    assert torch.equal(unpack_binary(index, 36), b)
    pooled = pack_binary(b, 12, 13)  # 3 × 3 cells: ones can merge, the rest repeats an index
    assert torch.equal(unpack_binary(pooled, 12), downsample_binary(b, 12) > 0.5)
