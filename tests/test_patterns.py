"""Pattern scores and labels on synthetic binarised maps of each base pattern and diagonal offset.

The maps follow the paper's definitions (Sec. 6.3.1, Fig. 13), with patches in row-major image
order (index = r·grid + c): counter-diagonal = each patch attends its mirror (r, grid-1-c) in its
own image row; horizontal = each patch attends several patches before/after it in its own image
row (optionally mixed with the self-diagonal); vertical = many sources attend the same targets;
block = the patches of a local region mutually attend.
"""

from __future__ import annotations

import pytest
import torch

from vitscope.analysis.patterns import (
    _diagonal_hits,
    _row_confinement,
    labels_from_scores,
    offset_scores,
    pattern_labels,
    pattern_scores,
)
from vitscope.vocab import BASE_PATTERNS, OFFSETS, PATTERNS

GRIDS = [5, 8, 14]


def offset_map(grid: int, offset: str) -> torch.Tensor:
    """Each source attends its `offset` neighbour (built with a loop, independently of the module)."""
    n = grid * grid
    b = torch.zeros(n, n, dtype=torch.bool)
    for s in range(n):
        r, c = divmod(s, grid)
        t = {"self": s, "left": s - 1 if c > 0 else None, "right": s + 1 if c < grid - 1 else None,
             "up": s - grid if r > 0 else None, "down": s + grid if r < grid - 1 else None,
             "counter": r * grid + grid - 1 - c}[offset]  # mirror in the same image row
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
    """A few sources attend most targets anywhere (long heatmap rows); transposed: vertical lines."""
    n = grid * grid
    b = torch.zeros(n, n, dtype=torch.bool)
    k = max(1, grid // 4)
    rows = torch.randperm(n, generator=g)[:k]
    b[rows] = torch.rand(k, n, generator=g) < 0.85
    return b.T.contiguous() if vertical else b


def horizontal_map(grid: int, g: torch.Generator, with_self: bool) -> torch.Tensor:
    """The paper's horizontal: each patch attends 2–4 patches before/after it in its own image row.

    The targets are drawn among the row's patches within 4 columns of the source (built with a
    loop, independently of the module); `with_self` mixes in the self-diagonal (Fig. 13J-K).
    """
    n = grid * grid
    b = torch.zeros(n, n, dtype=torch.bool)
    for s in range(n):
        r, c = divmod(s, grid)
        near = [x for x in range(grid) if x != c and abs(x - c) <= 4]
        k = min(len(near), int(torch.randint(2, 5, (1,), generator=g)))
        for i in torch.randperm(len(near), generator=g)[:k].tolist():
            b[s, r * grid + near[i]] = True
        b[s, s] = with_self
    return b


def run_map(grid: int, before: int, after: int, with_self: bool) -> torch.Tensor:
    """Deterministic in-row run: each patch attends the `before` patches left and `after` right of it."""
    n = grid * grid
    b = torch.zeros(n, n, dtype=torch.bool)
    for s in range(n):
        r, c = divmod(s, grid)
        for x in range(max(0, c - before), min(grid, c + after + 1)):
            b[s, r * grid + x] = x != c or with_self
    return b


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
    others = scores[:, [i for i in range(len(OFFSETS)) if OFFSETS[i] != offset]]
    limit = torch.full((5,), 0.2)
    if offset == "counter" and grid % 2:  # the middle column of an odd grid is its own mirror: 1/grid on "self"
        limit[0] = 1 / grid + 0.1
    assert (best > 0.9).all() and (others < limit).all(), scores


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("with_self", [False, True])
def test_horizontal_runs_with_noise_are_labelled_horizontal(grid, with_self):
    # several in-row targets per patch: not diagonal (although on diagonals d = ±1..±4), not block
    g = torch.Generator().manual_seed(10 * grid + with_self)
    n = grid * grid
    maps = torch.stack([add_noise(horizontal_map(grid, g, with_self), n // 4, g) for _ in range(4)])
    scores = pattern_scores(maps, grid)
    labels, _ = pattern_labels(maps, grid)
    assert labels.tolist() == [PATTERNS.index("horizontal")] * 4, scores
    others = scores[:, [0, 2, 3]].max(-1).values
    assert (scores[:, 1] > 0.5).all() and (scores[:, 1] > 1.5 * others).all(), scores  # a clear margin


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("pattern", ["vertical", "block"])
def test_lines_and_blocks_with_noise_are_labelled(grid, pattern):
    g = torch.Generator().manual_seed(100 * grid + PATTERNS.index(pattern))
    n = grid * grid
    make = {"vertical": lambda: lines_map(grid, g, vertical=True),
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
    column = torch.zeros(n, n, dtype=torch.bool)
    column[:, 3] = True
    s = torch.tensor(range(n))
    one_block = torch.zeros(n, n, dtype=torch.bool)
    one_block[s[:n // 3, None], s[None, :n // 3]] = True  # the first image rows attend each other
    maps = torch.stack([offset_map(grid, "self"), run_map(grid, 2, 2, with_self=False), column, one_block])
    scores = pattern_scores(maps, grid)
    assert scores[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # the diagonal explains every 1, nothing else does
    assert scores[1].tolist() == [0.0, 1.0, 0.0, 0.0]  # in-row runs: all horizontal, credited once
    for i in (2, 3):
        assert scores[i, i] > 0.7 and scores[i].argmax() == i, scores[i]
    assert scores[2, 0] < 0.05  # a line crosses each diagonal once
    assert scores[3, 0] < 0.2  # the block straddles the main diagonals but covers them only ~1/3


@pytest.mark.parametrize("grid", GRIDS)
def test_in_row_neighbour_count_separates_diagonal_from_horizontal(grid):
    # one in-row target per patch is a diagonal offset (left, right, counter); runs of two or more
    # are horizontal; several targets in other image rows (up + down, Fig. 13F-H) stay diagonal
    up_down = offset_map(grid, "up") | offset_map(grid, "down") | offset_map(grid, "self")
    full_rows = run_map(grid, grid, grid, with_self=True)  # each image row attends all of itself
    maps = torch.stack([offset_map(grid, "self") | offset_map(grid, "left"), up_down,
                        offset_map(grid, "counter") | offset_map(grid, "self"),
                        run_map(grid, 2, 2, with_self=True), run_map(grid, 2, 0, with_self=False), full_rows])
    labels, _ = pattern_labels(maps, grid)
    d, h = PATTERNS.index("diagonal"), PATTERNS.index("horizontal")
    assert labels.tolist() == [d, d, d, h, h, h], pattern_scores(maps, grid)
    assert (pattern_scores(maps[:3], grid)[:, 1] == 0).all()
    # a 1 × grid "region" is a row, not a block: its 1s are horizontal except the self-diagonal
    full = pattern_scores(full_rows, grid)
    torch.testing.assert_close(full[:2], torch.tensor([1 / grid, 1 - 1 / grid]))  # in-row 1s: no diagonal credit
    g = torch.Generator().manual_seed(grid)
    one_row = torch.zeros(4, grid * grid, grid * grid, dtype=torch.bool)
    for i, r in enumerate((0, 1, grid // 2, grid - 1)):  # one image row attends all of itself, plus noise
        one_row[i, r * grid:(r + 1) * grid, r * grid:(r + 1) * grid] = True
        one_row[i] = add_noise(one_row[i], grid, g)
    scores = pattern_scores(one_row, grid)
    assert (scores.argmax(-1) == h).all() and (scores[:, 3] < 0.25).all(), scores


def test_row_confinement_follows_the_documented_rule():
    # per patch in image row 0 of a grid-8 map: its 1s per image row (own row first, self excluded)
    grid, n = 8, 64
    cases = {  # counts per image row -> expected weight [h ≥ 2]·(1 − e/h)·(1 − (o − 1)⁺/h), e = off-row·7/56
        "run of 3": ([3, 0, 0, 0, 0, 0, 0, 0], 1.0),
        "run of 3 + one stray": ([3, 1, 0, 0, 0, 0, 0, 0], 1 - 0.125 / 3),  # the stray is forgiven by o
        "single in-row neighbour": ([1, 0, 0, 0, 0, 0, 0, 0], 0.0),  # left / right / counter: diagonal
        "2 in every row (diffuse)": ([2, 2, 2, 2, 2, 2, 2, 2], (1 - 1.75 / 2) * (1 - 1 / 2)),  # chance term
        "3x3 block around it": ([2, 3, 0, 0, 0, 0, 0, 0], 0.0),  # the next image row beats its own
        "long row": ([7, 8, 8, 8, 8, 8, 8, 8], 0.0),
    }
    per_row = torch.zeros(1, n, grid)
    per_row[0, :len(cases)] = torch.tensor([c for c, _ in cases.values()], dtype=torch.float32)
    w = _row_confinement(per_row, torch.zeros(1, n), grid)[0, :len(cases)]
    expected = torch.tensor([x for _, x in cases.values()])
    torch.testing.assert_close(w, expected, msg=str(list(zip(cases, w.tolist(), strict=True))))


@pytest.mark.parametrize("grid", GRIDS)
def test_long_rows_and_thick_bands(grid):
    # a complete biclique much taller than wide is "many sources attend the same targets" (vertical);
    # its transpose, like any long heatmap row (one source attending targets anywhere), is none of the
    # paper's patterns: not horizontal (not confined to the source's image row), not block (not square)
    n = grid * grid
    g = torch.Generator().manual_seed(grid)
    band = torch.zeros(n, n, dtype=torch.bool)
    band[:, 2:5] = True  # all sources attend 3 adjacent targets
    scores = pattern_scores(torch.stack([band, band.T]), grid)
    assert scores[0, 2] > 0.75 and scores[0].argmax() == 2, scores
    assert (scores[:, 3] < 0.1).all(), scores
    assert scores[1].max() < 0.1 + 1 / grid, scores  # only image row 0's own sources look in-row
    rows = torch.stack([add_noise(lines_map(grid, g, vertical=False), n // 4, g) for _ in range(4)])
    assert pattern_scores(rows, grid).max() < 0.1, pattern_scores(rows, grid)


def test_random_noise_scores_low_on_every_pattern():
    # sparse scatter leaves most rows empty and dense scatter closes rectangles by chance:
    # both are corrected for, so no pattern claims noise at any density
    g = torch.Generator().manual_seed(3)
    for grid, density in ((8, 0.01), (8, 0.2), (14, 0.003), (14, 0.01), (14, 0.05), (14, 0.2)):
        n = grid * grid
        scores = pattern_scores(torch.rand(6, n, n, generator=g) < density, grid)  # [6, 4]
        assert scores.mean(0).max() < 0.06 and scores.max() < 0.15, (grid, density, scores)


def test_transpose_keeps_diagonal_horizontal_block_and_swaps_offsets():
    # "same image row" is symmetric, so an in-row run transposed is an in-row run (horizontal stays
    # horizontal), diagonals map to their mirrored offsets, a block stays a block; only "vertical"
    # is not symmetric: a long column transposed is a long row, which is no pattern
    g = torch.Generator().manual_seed(5)
    grid = 8
    maps = torch.stack([add_noise(horizontal_map(grid, g, with_self=True), 20, g),
                        add_noise(offset_map(grid, "left"), 20, g),
                        add_noise(offset_map(grid, "down"), 20, g),
                        add_noise(offset_map(grid, "counter"), 20, g),
                        add_noise(block_map(grid, g), 20, g),
                        add_noise(lines_map(grid, g, vertical=True), 20, g)])
    t = maps.transpose(-1, -2)
    ps, pt = pattern_scores(maps, grid), pattern_scores(t, grid)
    torch.testing.assert_close(pt[:, [0, 1, 3]], ps[:, [0, 1, 3]])
    assert pattern_labels(t, grid)[0][:5].tolist() == pattern_labels(maps, grid)[0][:5].tolist() == [1, 0, 0, 0, 3]
    assert ps[5, 2] > 0.75 and pt[5].max() < 0.1, (ps[5], pt[5])
    swap = [OFFSETS.index(o) for o in ("self", "right", "left", "down", "up", "counter")]
    torch.testing.assert_close(offset_scores(t, grid), offset_scores(maps, grid)[:, swap])


def test_scores_ignore_token_order_within_the_image_row_structure():
    # closure, marginals and η only see which tokens share an image row, so permuting the image
    # rows and, separately in each row, the columns leaves horizontal and block unchanged (an
    # arbitrary token permutation would scatter in-row runs over rows: then they are no longer
    # horizontal, by definition)
    g = torch.Generator().manual_seed(7)
    grid = 8
    maps = torch.stack([add_noise(block_map(grid, g), 10, g), add_noise(horizontal_map(grid, g, True), 10, g)])
    rows = torch.randperm(grid, generator=g)
    p = torch.cat([rows[r] * grid + torch.randperm(grid, generator=g) for r in range(grid)])  # new -> old token
    permuted = maps[:, p][:, :, p]
    torch.testing.assert_close(pattern_scores(permuted, grid)[:, [1, 3]], pattern_scores(maps, grid)[:, [1, 3]])
    assert pattern_labels(permuted, grid)[0].tolist() == [3, 1]


def test_shapes_dtypes_and_ranges():
    g = torch.Generator().manual_seed(11)
    maps = (torch.rand(2, 3, 25, 25, generator=g) < 0.1).to(torch.uint8)  # 0/1 numbers work too
    ps, os_ = pattern_scores(maps, 5), offset_scores(maps, 5)
    assert ps.shape == (2, 3, 4) and os_.shape == (2, 3, 6)
    assert ((ps >= 0) & (ps <= 1)).all() and ((os_ >= 0) & (os_ <= 1)).all()
    pattern, off = pattern_labels(maps, 5)
    assert pattern.shape == off.shape == (2, 3) and pattern.dtype == off.dtype == torch.int64
    torch.testing.assert_close(pattern_scores(maps.bool(), 5), ps)
    p64, o64 = pattern_scores(maps.double(), 5), offset_scores(maps.double(), 5)  # float64 stays float64
    assert p64.dtype == o64.dtype == torch.float64
    torch.testing.assert_close(p64.float(), ps)
    torch.testing.assert_close(o64.float(), os_)
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


def exactly_k_noise(grid: int, count: int, g: torch.Generator) -> torch.Tensor:
    """`count` maps with exactly ceil(1 % · N²) scattered 1s: what binarising pure noise gives."""
    n = grid * grid
    k = -(-n * n // 100)
    idx = torch.rand(count, n * n, generator=g).argsort(-1)[:, :k]
    return torch.zeros(count, n * n).scatter_(1, idx, 1.0).reshape(count, n, n)


@pytest.mark.parametrize("grid", [8, 14])
def test_noise_empty_maps_and_long_rows_are_none(grid):
    # "none": no base pattern explains the map beyond chance (before, argmax called all of these diagonal/self)
    g = torch.Generator().manual_seed(grid)
    n = grid * grid
    maps = torch.cat([exactly_k_noise(grid, 200, g), torch.zeros(1, n, n),
                      torch.stack([lines_map(grid, g, vertical=False) for _ in range(4)]).float()])
    labels, _ = pattern_labels(maps, grid)
    none = PATTERNS.index("none")
    assert (labels == none).all(), (labels != none).nonzero()
    first, second = labels_from_scores(pattern_scores(maps, grid))
    assert (first == none).all() and (second == none).all()


def test_real_patterns_with_noise_are_not_none():
    # the same noise on top of a drawn pattern leaves the pattern's label: "none" only where nothing is drawn
    g = torch.Generator().manual_seed(4)
    grid = 8
    maps = torch.stack([add_noise(offset_map(grid, "up"), 40, g), add_noise(horizontal_map(grid, g, True), 40, g),
                        add_noise(lines_map(grid, g, vertical=True), 40, g), add_noise(block_map(grid, g), 40, g)])
    assert pattern_labels(maps, grid)[0].tolist() == [PATTERNS.index(p) for p in BASE_PATTERNS]


def test_diagonal_with_horizontal_runs_reports_both():
    # the paper's Fig. 13 J/K: every patch attends itself, and in half the image rows also runs horizontally;
    # horizontal runs drawn with the self-diagonal are horizontal first, diagonal second
    g = torch.Generator().manual_seed(6)
    grid = 8
    half = grid * grid // 2
    mixed = offset_map(grid, "self").clone()
    mixed[half:] |= horizontal_map(grid, g, with_self=False)[half:]
    maps = torch.stack([mixed, horizontal_map(grid, g, with_self=True), offset_map(grid, "self")])
    first, second = labels_from_scores(pattern_scores(maps, grid))
    d, h, none = (PATTERNS.index(p) for p in ("diagonal", "horizontal", "none"))
    assert {int(first[0]), int(second[0])} == {d, h}, pattern_scores(mixed, grid)
    assert (first[1], second[1]) == (h, d), pattern_scores(maps[1], grid)
    assert (first[2], second[2]) == (d, none)  # a clean diagonal has no second pattern


def test_labels_from_scores_follow_the_documented_thresholds():
    from vitscope.analysis.patterns import NONE_BELOW, SECOND_ABOVE

    none = PATTERNS.index("none")
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0],  # nothing: none, none
                           [NONE_BELOW - 1e-3, 0.0, 0.0, 0.0],  # just below the cut: none
                           [0.1, NONE_BELOW, 0.0, 0.0],  # just at it: horizontal
                           [0.6, 0.0, SECOND_ABOVE, 0.1],  # vertical second, just at its cut
                           [0.3, 0.0, 0.0, 0.3],  # a tie goes to the earlier pattern, the other is second
                           [0.9, SECOND_ABOVE - 1e-3, 0.0, 0.0]])  # runner-up too weak: no second
    first, second = labels_from_scores(scores)
    assert first.tolist() == [none, none, 1, 0, 0, 0]
    assert second.tolist() == [none, none, none, 2, 3, none]
