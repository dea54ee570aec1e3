"""Pattern scores and labels on synthetic binarised maps of each base pattern and diagonal offset."""

from __future__ import annotations

import pytest
import torch

from vitscope.analysis.patterns import (
    OFFSETS,
    PATTERNS,
    _diagonal_hits,
    offset_scores,
    pattern_labels,
    pattern_scores,
)

GRIDS = [5, 8, 14]


def offset_map(grid: int, offset: str) -> torch.Tensor:
    """Each source attends its `offset` neighbour (built with a loop, independently of the module)."""
    n = grid * grid
    b = torch.zeros(n, n, dtype=torch.bool)
    for s in range(n):
        r, c = divmod(s, grid)
        t = {"self": s, "left": s - 1 if c > 0 else None, "right": s + 1 if c < grid - 1 else None,
             "up": s - grid if r > 0 else None, "down": s + grid if r < grid - 1 else None,
             "counter": n - 1 - s}[offset]
        if t is not None:
            b[s, t] = True
    return b


def add_noise(b: torch.Tensor, ones: int, g: torch.Generator) -> torch.Tensor:
    """Set `ones` uniformly random entries to 1."""
    n = b.shape[-1]
    flat = b.clone().reshape(-1)
    flat[torch.randint(0, n * n, (ones,), generator=g)] = True
    return flat.reshape(n, n)


def lines_map(grid: int, g: torch.Generator, vertical: bool) -> torch.Tensor:
    """A few sources attend most targets (horizontal lines); transposed for vertical lines."""
    n = grid * grid
    b = torch.zeros(n, n, dtype=torch.bool)
    k = max(1, grid // 4)
    rows = torch.randperm(n, generator=g)[:k]
    b[rows] = torch.rand(k, n, generator=g) < 0.85
    return b.T.contiguous() if vertical else b


def region(grid: int, g: torch.Generator) -> torch.Tensor:
    """Token indices of a random compact spatial region (about half the grid side square)."""
    h = w = max(2, grid // 2)
    r0, c0 = (int(torch.randint(0, grid - x + 1, (1,), generator=g)) for x in (h, w))
    return torch.tensor([r * grid + c for r in range(r0, r0 + h) for c in range(c0, c0 + w)])


def block_map(grid: int, g: torch.Generator, fill: float = 0.9) -> torch.Tensor:
    """Patches of one region attend each other: in row-major order, a grid of squares in the matrix."""
    n = grid * grid
    b = torch.zeros(n, n, dtype=torch.bool)
    s = region(grid, g)
    b[s[:, None], s[None]] = torch.rand(len(s), len(s), generator=g) < fill
    return b


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("offset", OFFSETS)
def test_diagonal_offsets_with_noise_are_labelled(grid, offset):
    g = torch.Generator().manual_seed(100 * grid + OFFSETS.index(offset))  # deterministic
    n = grid * grid
    maps = torch.stack([add_noise(offset_map(grid, offset), n // 2, g) for _ in range(4)])  # 50 % extra 1s
    pattern, off = pattern_labels(maps, grid)
    assert pattern.tolist() == [PATTERNS.index("diagonal")] * 4
    assert off.tolist() == [OFFSETS.index(offset)] * 4
    scores = offset_scores(maps, grid)
    best = scores[:, OFFSETS.index(offset)]
    others = scores[:, [i for i in range(6) if OFFSETS[i] != offset]]
    assert (best > 0.9).all() and (others < 0.2).all()


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("pattern", ["horizontal", "vertical", "block"])
def test_lines_and_blocks_with_noise_are_labelled(grid, pattern):
    g = torch.Generator().manual_seed(100 * grid + PATTERNS.index(pattern))
    n = grid * grid
    make = {"horizontal": lambda: lines_map(grid, g, vertical=False),
            "vertical": lambda: lines_map(grid, g, vertical=True),
            "block": lambda: block_map(grid, g)}[pattern]
    maps = torch.stack([add_noise(make(), n // 4, g) for _ in range(4)])
    labels, _ = pattern_labels(maps, grid)
    assert labels.tolist() == [PATTERNS.index(pattern)] * 4, pattern_scores(maps, grid)


@pytest.mark.parametrize("grid", [8, 14])
def test_sparsely_sampled_block_is_a_block(grid):
    # top-1 % binarisation keeps a sparse sample of a large block: sources attend different targets
    g = torch.Generator().manual_seed(grid)
    maps = torch.stack([add_noise(block_map(grid, g, fill=0.25), grid, g) for _ in range(4)])
    scores = pattern_scores(maps, grid)
    assert (scores.argmax(-1) == PATTERNS.index("block")).all(), scores
    assert (scores[:, 3] > 4 * scores[:, :3].max(-1).values).all(), scores  # a clear margin, not a tie


@pytest.mark.parametrize("grid", GRIDS)
def test_clean_patterns_score_near_one_on_their_own_pattern_only(grid):
    n = grid * grid
    g = torch.Generator().manual_seed(0)
    column = torch.zeros(n, n, dtype=torch.bool)
    column[:, 3] = True
    s = torch.tensor(range(n))
    one_block = torch.zeros(n, n, dtype=torch.bool)
    one_block[s[:n // 3, None], s[None, :n // 3]] = True
    maps = torch.stack([offset_map(grid, "self"), column.T, column, one_block])
    scores = pattern_scores(maps, grid)
    assert scores[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # the diagonal explains every 1, nothing else does
    for i in (1, 2, 3):
        assert scores[i, i] > 0.75 and scores[i].argmax() == i, scores[i]
    assert (scores[1:3, 0] < 0.05).all()  # a line crosses each diagonal once
    assert scores[3, 0] < 0.2  # the block straddles the main diagonals but covers them only ~1/3
    assert pattern_scores(lines_map(grid, g, vertical=False), grid)[2] == 0.0  # rows are not columns


@pytest.mark.parametrize("grid", GRIDS)
def test_thick_bands_are_lines_not_blocks(grid):
    # a complete biclique that is much taller than wide is "many sources attend the same targets"
    n = grid * grid
    band = torch.zeros(n, n, dtype=torch.bool)
    band[:, 2:5] = True  # all sources attend 3 adjacent targets
    scores = pattern_scores(torch.stack([band, band.T]), grid)
    assert scores[0, 2] > 0.75 and scores[1, 1] > 0.75
    assert (scores[:, 3] < 0.1).all(), scores


def test_random_noise_scores_low_on_every_pattern():
    # sparse scatter leaves most rows empty and dense scatter closes rectangles by chance:
    # both are corrected for, so no pattern claims noise at any density
    g = torch.Generator().manual_seed(3)
    for grid, density in ((8, 0.01), (8, 0.2), (14, 0.003), (14, 0.01), (14, 0.05), (14, 0.2)):
        n = grid * grid
        scores = pattern_scores(torch.rand(6, n, n, generator=g) < density, grid)  # [6, 4]
        assert scores.mean(0).max() < 0.06 and scores.max() < 0.15, (grid, density, scores)


def test_transpose_swaps_horizontal_vertical_left_right_up_down():
    g = torch.Generator().manual_seed(5)
    grid = 8
    maps = torch.stack([add_noise(lines_map(grid, g, vertical=False), 20, g),
                        add_noise(offset_map(grid, "left"), 20, g),
                        add_noise(offset_map(grid, "down"), 20, g),
                        add_noise(block_map(grid, g), 20, g)])
    t = maps.transpose(-1, -2)
    torch.testing.assert_close(pattern_scores(t, grid), pattern_scores(maps, grid)[:, [0, 2, 1, 3]])
    swap = [OFFSETS.index(o) for o in ("self", "right", "left", "down", "up", "counter")]
    torch.testing.assert_close(offset_scores(t, grid), offset_scores(maps, grid)[:, swap])


def test_block_score_ignores_token_order():
    # closure and marginals do not depend on where the region sits in the matrix
    g = torch.Generator().manual_seed(7)
    grid, n = 8, 64
    b = add_noise(block_map(grid, g), 10, g)
    p = torch.randperm(n, generator=g)
    permuted = b[p][:, p]  # the same tokens in another order
    torch.testing.assert_close(pattern_scores(permuted, grid)[3], pattern_scores(b, grid)[3])


def test_shapes_dtypes_and_ranges():
    g = torch.Generator().manual_seed(11)
    maps = (torch.rand(2, 3, 25, 25, generator=g) < 0.1).to(torch.uint8)  # 0/1 numbers work too
    ps, os_ = pattern_scores(maps, 5), offset_scores(maps, 5)
    assert ps.shape == (2, 3, 4) and os_.shape == (2, 3, 6)
    assert ((ps >= 0) & (ps <= 1)).all() and ((os_ >= 0) & (os_ <= 1)).all()
    pattern, off = pattern_labels(maps, 5)
    assert pattern.shape == off.shape == (2, 3) and pattern.dtype == off.dtype == torch.int64
    torch.testing.assert_close(pattern_scores(maps.bool(), 5), ps)
    assert pattern_scores(torch.zeros(25, 25), 5).tolist() == [0.0] * 4  # empty map: no NaN
    assert offset_scores(torch.ones(25, 25), 5).tolist() == [0.0] * 6  # full map: no diagonal above chance
    with pytest.raises(ValueError, match="grid 5"):
        pattern_scores(torch.zeros(24, 24), 5)


def test_diagonal_hits_match_torch_diagonal():
    g = torch.Generator().manual_seed(2)
    for n in (1, 4, 25):
        b = (torch.rand(3, n, n, generator=g) < 0.4).float()
        ref = torch.stack([torch.stack([torch.diagonal(m, d).sum() for d in range(-(n - 1), n)]) for m in b])
        assert torch.equal(_diagonal_hits(b), ref)
