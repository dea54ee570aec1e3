"""k-hop attention strength, its entropy and mean attention distance against slow loop references."""

from __future__ import annotations

import math

import pytest
import torch

from vitscope.analysis.strength import attention_distance, attention_strength, ring_masks, strength_entropy


def ref_strength(a: torch.Tensor, grid: int) -> list[float]:
    """docs/architecture.md, literally: per source, mean over each Chebyshev ring; then mean over sources having it."""
    n = grid * grid
    per_hop: list[list[float]] = [[] for _ in range(grid)]
    for s in range(n):
        rs, cs = divmod(s, grid)
        rings: dict[int, list[float]] = {}
        for t in range(n):
            rt, ct = divmod(t, grid)
            rings.setdefault(max(abs(rs - rt), abs(cs - ct)), []).append(float(a[s, t]))
        for k, vals in rings.items():
            per_hop[k].append(sum(vals) / len(vals))
    return [sum(v) / len(v) for v in per_hop]


def ref_entropy(s: list[float]) -> float:
    total = sum(s)
    if total == 0:
        return 0.0
    return -sum(x / total * math.log(x / total) for x in s if x > 0) / math.log(len(s))


def ref_distance(a: torch.Tensor, grid: int) -> float:
    n = grid * grid
    dists = []
    for s in range(n):
        mass = sum(float(a[s, t]) for t in range(n))
        if mass == 0:
            continue
        d = 0.0
        for t in range(n):
            (rs, cs), (rt, ct) = divmod(s, grid), divmod(t, grid)
            d += float(a[s, t]) / mass * math.hypot(rs - rt, cs - ct)
        dists.append(d)
    return sum(dists) / len(dists) if dists else 0.0


def test_ring_masks_design_example():
    m = ring_masks(5)  # [5, 25, 25]
    assert m.shape == (5, 25, 25) and m.dtype == torch.bool
    corner, centre = 0, 2 * 5 + 2  # patches (0,0) and (2,2)
    assert m[:, corner].sum(-1).tolist() == [1, 3, 5, 7, 9]
    assert m[:, centre].sum(-1).tolist() == [1, 8, 16, 0, 0]  # no 3- or 4-hop neighbours
    assert torch.equal(m.sum(0), torch.ones(25, 25, dtype=torch.long))  # rings partition the targets
    assert torch.equal(m, m.transpose(1, 2))  # distance is symmetric


def test_far_rings_skip_sources_without_them():
    # only patch (0,0) attends (1 to every patch): s_k = 1 / #sources that have ring k
    a = torch.zeros(25, 25)
    a[0] = 1.0
    s = attention_strength(a, 5)
    # every patch has rings 0..2; all but (2,2) have ring 3; only the 16 border patches have ring 4
    expected = torch.tensor([1 / 25, 1 / 25, 1 / 25, 1 / 24, 1 / 16])
    torch.testing.assert_close(s, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("grid", [3, 5, 7])
def test_uniform_attention_gives_equal_ring_means(grid):
    n = grid * grid
    s = attention_strength(torch.full((n, n), 1.0 / n), grid)
    torch.testing.assert_close(s, torch.full((grid,), 1.0 / n), rtol=0, atol=1e-7)
    assert strength_entropy(s).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("grid", [2, 4, 5, 6])
def test_strength_matches_loop_reference(grid):
    n = grid * grid
    g = torch.Generator().manual_seed(grid)
    a = torch.rand(2, 3, n, n, generator=g, dtype=torch.float64)  # rows need not sum to 1
    a[0, 0] = a[0, 0].softmax(-1)
    s = attention_strength(a, grid)
    assert s.shape == (2, 3, grid) and s.dtype == torch.float32
    ref = torch.tensor([[ref_strength(a[i, j], grid) for j in range(3)] for i in range(2)], dtype=torch.float32)
    torch.testing.assert_close(s, ref, rtol=0, atol=1e-6)


def test_strength_dtypes_give_float32():
    a = torch.rand(16, 16)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        s = attention_strength(a.to(dtype), 4)
        assert s.dtype == torch.float32
        torch.testing.assert_close(s, attention_strength(a, 4), rtol=2e-2, atol=2e-2)


def test_self_attention_is_all_hop_zero():
    s = attention_strength(torch.eye(64), 8)
    assert s[0].item() == pytest.approx(1.0) and s[1:].abs().max().item() == 0.0
    assert strength_entropy(s).item() == 0.0


def test_entropy_limits_and_reference():
    assert strength_entropy(torch.tensor([0.0, 0.0, 3.0, 0.0])).item() == 0.0  # one-hot
    assert strength_entropy(torch.full((7,), 0.2)).item() == pytest.approx(1.0, abs=1e-6)  # uniform
    assert strength_entropy(torch.zeros(5)).item() == 0.0  # guarded, not NaN
    g = torch.Generator().manual_seed(0)
    s = torch.rand(4, 6, generator=g)
    s[0, :3] = 0.0
    e = strength_entropy(s)
    assert e.shape == (4,) and e.dtype == torch.float32
    torch.testing.assert_close(e, torch.tensor([ref_entropy(row.tolist()) for row in s]), rtol=0, atol=1e-6)
    assert ((e > 0) & (e < 1)).all()


@pytest.mark.parametrize("grid", [3, 5, 8])
def test_distance_matches_loop_reference(grid):
    n = grid * grid
    g = torch.Generator().manual_seed(10 + grid)
    a = torch.rand(3, n, n, generator=g, dtype=torch.float64)
    a[1, 2] = 0.0  # a row with no mass is skipped
    d = attention_distance(a, grid)
    assert d.shape == (3,) and d.dtype == torch.float32
    ref = torch.tensor([ref_distance(x, grid) for x in a], dtype=torch.float32)
    torch.testing.assert_close(d, ref, rtol=0, atol=1e-6)


def test_distance_known_values():
    grid, n = 6, 36
    assert attention_distance(torch.eye(n), grid).item() == 0.0
    right = torch.zeros(n, n)
    src = torch.arange(n)
    has = src % grid < grid - 1
    right[src[has], src[has] + 1] = 0.3  # unnormalised rows: renormalised to 1 on the right neighbour
    right[~has] = 0.0
    assert attention_distance(right, grid).item() == pytest.approx(1.0, abs=1e-6)
    diag_step = torch.zeros(n, n)
    inner = src[(src % grid < grid - 1) & (src // grid < grid - 1)]
    diag_step[inner, inner + grid + 1] = 1.0  # down-right neighbour; other rows have no mass
    assert attention_distance(diag_step, grid).item() == pytest.approx(math.sqrt(2), abs=1e-6)
    assert attention_distance(torch.zeros(n, n), grid).item() == 0.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="grid 5"):
        attention_strength(torch.rand(24, 24), 5)
    with pytest.raises(ValueError):
        attention_distance(torch.rand(25), 5)
