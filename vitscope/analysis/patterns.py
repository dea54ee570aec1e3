"""Pattern labels for binarised patch attention: the paper's four base patterns (Fig. 13).

Input: a head's binarised patch-attention map, bool or 0/1, `[..., N, N]` (rows = source
patches, columns = target patches, row-major over a `grid × grid` grid, N = grid²).

Every pattern score is in [0, 1] and reads as "how much of the map's 1s this structure
explains, beyond what scattered 1s would give", so scores are comparable across patterns and
the label is their argmax:

- diagonal: share of 1s on diagonals t = s + d (any offset d, plus the counter-diagonal
  t = N-1-s), each diagonal weighted by its coverage above the map's density;
- horizontal / vertical: share of 1s on rows (columns) much longer than the columns (rows)
  they cross: one source attending many targets / many sources attending the same targets;
- block: groups of sources attending groups of targets, i.e. square bicliques: complete ones
  anywhere (rectangle closure) or one sparsely sampled core (concentration of the marginals).

The structures exclude each other by construction: a diagonal 1 sits in a short row and a
short column (no line, no block); a line is long one way only (not square); a block's rows
are as long as its columns (no line). Scattered noise scores ~0 on every pattern. All work is
batched (no Python loop over patches or heads); the closure costs two `[N, N]` matmuls per map.
"""

from __future__ import annotations

import torch
from torch import Tensor

PATTERNS = ("diagonal", "horizontal", "vertical", "block")
OFFSETS = ("self", "left", "right", "up", "down", "counter")


def _as_float(binary: Tensor, grid: int) -> tuple[Tensor, int]:
    n = grid * grid
    if grid < 1 or binary.ndim < 2 or tuple(binary.shape[-2:]) != (n, n):
        raise ValueError(f"expected a binarised patch map of shape [..., {n}, {n}] for grid {grid}, "
                         f"got {tuple(binary.shape)}")
    return (binary != 0).float(), n  # [..., N, N] exact 0/1 (float32 counts are exact to 2^24)


def _above_chance(hits: Tensor, length: Tensor, density: Tensor) -> Tensor:
    """Coverage hits/length rescaled so chance (the map's density ρ) is 0 and full is 1: (cov-ρ)/(1-ρ)."""
    cov = hits / length.clamp_min(1)
    rho = density.unsqueeze(-1)  # [..., 1]
    return ((cov - rho) / (1 - rho).clamp_min(1e-12)).clamp(0, 1) * (length > 0)


def _offset_targets(grid: int, device=None) -> tuple[Tensor, Tensor]:
    """Target index `[6, N]` of each source for each offset in OFFSETS, and its validity `[6, N]`.

    Sources without the neighbour (left of column 0, above row 0, …) are invalid, so a perfect
    "left" head still has coverage 1. Counter-diagonal entries that coincide with another
    offset's entry are invalid too, so the six diagonals are disjoint.
    """
    n = grid * grid
    s = torch.arange(n, device=device)
    r, c = s // grid, s % grid
    tgt = torch.stack([s, s - 1, s + 1, s - grid, s + grid, n - 1 - s])  # [6, N]
    valid = torch.stack([torch.ones_like(s, dtype=torch.bool), c > 0, c < grid - 1, r > 0, r < grid - 1,
                         torch.ones_like(s, dtype=torch.bool)])  # [6, N]
    clash = ((tgt[:5] == tgt[5]) & valid[:5]).any(0)  # [N] counter entry already on another diagonal
    valid[5] &= ~clash
    return tgt.clamp(0, n - 1), valid


def offset_scores(binary: Tensor, grid: int) -> Tensor:
    """`[..., 6]` in [0, 1]: how completely each diagonal of OFFSETS is drawn, above chance.

    Score = (coverage − ρ)/(1 − ρ), coverage = share of the sources (that have the neighbour)
    whose offset target is 1, ρ = density of the map. A perfect "up" head scores 1 on "up"; a
    diagonal that random 1s hit only at the map's density scores 0, so dense or line-shaped maps
    do not look diagonal.
    """
    return _offset_scores(*_as_float(binary, grid), grid)


def _offset_scores(b: Tensor, n: int, grid: int) -> Tensor:
    tgt, valid = _offset_targets(grid, b.device)  # [6, N]
    src = torch.arange(n, device=b.device).expand_as(tgt)  # [6, N]
    hits = (b[..., src, tgt] * valid).sum(-1)  # [..., 6]
    density = b.sum((-2, -1)) / (n * n)  # [...]
    return _above_chance(hits, valid.sum(-1).to(b.dtype), density)


def _diagonal_hits(b: Tensor) -> Tensor:
    """`[..., 2N-1]` number of 1s on each diagonal t = s + d, d = -(N-1)..N-1 (d + N - 1 indexes).

    Skew trick, no gather: in the row-major flat map padded by N, windows of length N taken every
    N+1 elements start on the main diagonal, so window s, position j is entry (s, s+j).
    """
    n = b.shape[-1]
    keep = (torch.arange(n, device=b.device)[:, None] + torch.arange(n, device=b.device)[None]) < n  # [N, N] s+j < N

    def upper(x: Tensor) -> Tensor:  # [..., N] hits of d = 0..N-1
        flat = torch.nn.functional.pad(x.reshape(*x.shape[:-2], n * n), (0, n))  # [..., N²+N]
        return (flat.unfold(-1, n, n + 1) * keep).sum(-2)  # [..., N (s), N (j)] -> [..., N]

    up, low = upper(b), upper(b.transpose(-1, -2).contiguous())  # low[j] = hits of d = -j
    return torch.cat([low.flip(-1)[..., :-1], up], -1)  # [..., 2N-1]


def _diagonal_score(b: Tensor, grid: int, n: int, count: Tensor, density: Tensor) -> Tensor:
    """Share of 1s on well-covered diagonals: Σ_d κ_d · hits_d / #1s over t = s + d and t = N-1-s.

    κ_d is the above-chance coverage of diagonal d. Only diagonals at least one grid row long
    (|d| ≤ N − grid) count, so short corner diagonals hit once by noise are not "full". The
    ordinary diagonals partition the matrix; a counter-diagonal 1 takes the larger of its two κ.
    """
    dev = b.device
    d = torch.arange(-(n - 1), n, device=dev)  # [2N-1]
    length = (n - d.abs()) * (d.abs() <= n - grid)  # [2N-1]; too-short diagonals get length 0 -> κ 0
    hits = _diagonal_hits(b)  # [..., 2N-1]
    kappa = _above_chance(hits, length.to(b.dtype), density)  # [..., 2N-1]
    explained = (kappa * hits).sum(-1)  # [...]
    # counter-diagonal (s, N-1-s) lies on ordinary diagonal d = N-1-2s, index d + N-1 = 2(N-1-s)
    s = torch.arange(n, device=dev)
    anti_hits = b[..., s, n - 1 - s]  # [..., N]
    kappa_c = _above_chance(anti_hits.sum(-1, keepdim=True), torch.full((1,), float(n), device=dev), density)
    kappa_d = kappa[..., 2 * (n - 1 - s)]  # [..., N]
    explained = explained + (anti_hits * (torch.maximum(kappa_d, kappa_c) - kappa_d)).sum(-1)
    return explained / count.clamp_min(1)


def _line_score(b: Tensor, lines: Tensor, cross: Tensor, count: Tensor) -> Tensor:
    """Share of 1s on lines (rows of `b`) that are longer than the lines they cross, beyond noise.

    For each row: m = mean count of the columns its 1s sit in, weight (1 − (m + √m)/R)⁺, R = row
    count; √m allows for Poisson scatter, so random 1s and diagonals (R ≈ m) weigh ~0 while a
    row much longer than its columns weighs ~1. A hot column crossing diagonal rows makes m large
    for those rows, so it does not make them look horizontal.
    """
    m = (b @ cross.unsqueeze(-1)).squeeze(-1) / lines.clamp_min(1)  # [..., N]
    w = (1 - (m + m.sqrt()) / lines.clamp_min(1)).clamp_min(0)  # [..., N]
    return (w * lines).sum(-1) / count.clamp_min(1)


def _concentration(counts: Tensor, count: Tensor) -> Tensor:
    """Chance-corrected concentration `[...]` of the 1s into few rows (counts = row counts).

    Hoover index H = Σ (R_s − λ)⁺ / n, λ = n/N (share of 1s that would have to move to make all
    rows equal), rescaled so that scattered 1s (Poisson(λ) rows, whose expected H is the Poisson
    pmf at ⌊λ⌋) give 0 and all 1s in one row gives ≈ 1.
    """
    n_lines = counts.shape[-1]
    lam = (count / n_lines).unsqueeze(-1)  # [..., 1]
    h = (counts - lam).clamp_min(0).sum(-1) / count.clamp_min(1)  # [...]
    lam = lam.squeeze(-1).clamp_min(1e-12)
    f = lam.floor()
    h0 = torch.exp(-lam + f * lam.log() - torch.lgamma(f + 1))  # Poisson(λ) pmf at ⌊λ⌋ = E[H] for scatter
    return ((h - h0) / (1 - h0).clamp_min(1e-12)).clamp(0, 1) * (count > 0)


def _core_block_score(b: Tensor, rows: Tensor, cols: Tensor, count: Tensor) -> Tensor:
    """Concentration of the 1s into one square core sub-block, found from the marginals.

    Core = rows × columns with at least the mean count. Score = share of 1s in the core ·
    min(row, column concentration beyond chance) · squareness(#core rows, #core columns) ·
    (1 − 1/min(mean 1s per core row, per core column)). This catches a block even when
    binarisation keeps only a sparse sample of it (sources of a region attending different
    targets of the region), which the closure term cannot; scattered noise scores ~0.
    """
    n = rows.shape[-1]
    mean = (count / n).unsqueeze(-1)  # [..., 1]
    in_r = ((rows >= mean) & (rows > 0)).to(b.dtype)  # [..., N]
    in_c = ((cols >= mean) & (cols > 0)).to(b.dtype)
    nr, nc = in_r.sum(-1), in_c.sum(-1)  # [...]
    inside = (in_r.unsqueeze(-2) @ b @ in_c.unsqueeze(-1)).squeeze(-1).squeeze(-1)  # [...]
    share = inside / count.clamp_min(1)
    conc = torch.minimum(_concentration(rows, count), _concentration(cols, count))
    square = torch.minimum(nr, nc) / torch.maximum(nr, nc).clamp_min(1)
    per_line = torch.minimum(inside / nr.clamp_min(1), inside / nc.clamp_min(1))  # mean 1s per core row/col
    return share * conc * square * (1 - 1 / per_line.clamp_min(1))


def _closure_block_score(b: Tensor, rows: Tensor, cols: Tensor, count: Tensor) -> Tensor:
    """Share of 1s inside dense square bicliques, any number of them, anywhere (token-order free).

    Per 1 at (s,t): closure = share of the (R_s−1)(C_t−1) rectangles through it whose fourth
    corner is 1 (1 in a complete biclique, ≈ density ρ for scattered 1s, so rescaled to
    (closure − ρ)/(1 − ρ)), times squareness min/max(R_s, C_t) and (1 − 1/min(R_s, C_t)) to
    discount 2×2 accidents. `b` is `[M, N, N]`; the weights are evaluated at the 1s only.
    """
    corners = torch.bmm(torch.bmm(b, b.transpose(-1, -2)), b)  # [M, N, N] #(s',t') with B[s,t'] B[s',t] B[s',t']
    m, s, t = b.nonzero(as_tuple=True)  # [E] each, E = number of 1s in the batch
    a_, c_ = rows[m, s], cols[m, t]  # [E]
    rect = (corners[m, s, t] - a_ - c_ + 1).clamp_min(0)  # drop the trivial s' = s or t' = t terms
    possible = (a_ - 1) * (c_ - 1)
    lo, hi = torch.minimum(a_, c_), torch.maximum(a_, c_)
    rho = count[m] / b.shape[-1] ** 2  # [E] density of the entry's map
    closure = ((rect / possible.clamp_min(1) - rho) / (1 - rho).clamp_min(1e-12)).clamp_min(0) * (possible > 0)
    weight = closure * (lo / hi) * (1 - 1 / lo)  # [E]
    total = torch.zeros_like(count).index_add_(0, m, weight)  # [M]
    return total / count.clamp_min(1)


def pattern_scores(binary: Tensor, grid: int) -> Tensor:
    """`[..., 4]` in [0, 1], order PATTERNS: how much of the map each base pattern explains.

    With R_s = 1s in row s, C_t = 1s in column t, n = all 1s:

    - diagonal = Σ_d κ_d·hits_d / n, κ_d = above-chance coverage of diagonal t = s+d (and of the
      counter-diagonal): the share of 1s on the well-drawn diagonals;
    - horizontal = share of 1s on rows much longer than the columns they cross (see
      `_line_score`), vertical = the same for columns: "many targets per source" vs "many
      sources per target", insensitive to scattered noise and to diagonals;
    - block = max of two views of "groups of sources attending groups of targets": the 1s in
      complete square bicliques (closure, any number of blocks), and the concentration of the
      1s into one square core sub-block (also when the block is only sparsely sampled).

    An empty map scores 0 everywhere.
    """
    return _pattern_scores(*_as_float(binary, grid), grid)


def _pattern_scores(b: Tensor, n: int, grid: int) -> Tensor:
    batch = b.shape[:-2]
    b = b.reshape(-1, n, n)  # [M, N, N]
    count = b.sum((-2, -1))  # [M]
    rows = b.sum(-1)  # [M, N] R_s
    cols = b.sum(-2)  # [M, N] C_t
    diagonal = _diagonal_score(b, grid, n, count, count / (n * n))
    horizontal = _line_score(b, rows, cols, count)
    vertical = _line_score(b.transpose(-1, -2), cols, rows, count)
    block = torch.maximum(_closure_block_score(b, rows, cols, count), _core_block_score(b, rows, cols, count))
    return torch.stack([diagonal, horizontal, vertical, block], -1).clamp(0, 1).reshape(*batch, 4)


def pattern_labels(binary: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """(pattern index `[...]`, best offset index `[...]`), int64, into PATTERNS and OFFSETS.

    The pattern is the argmax of `pattern_scores`; the offset is the argmax of `offset_scores`
    and is meaningful when the pattern is "diagonal". Ties go to the earlier entry.
    """
    b, n = _as_float(binary, grid)  # [..., N, N]
    return _pattern_scores(b, n, grid).argmax(-1), _offset_scores(b, n, grid).argmax(-1)
