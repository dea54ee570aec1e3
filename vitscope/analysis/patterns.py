"""Pattern labels for binarised patch attention: the paper's four base patterns (Fig. 13, Sec. 6.3.1).

Input: a head's binarised patch-attention map, bool or 0/1, `[..., N, N]` (rows = source
patches, columns = target patches, row-major over a `grid × grid` grid: index = r·grid + c,
N = grid²). In the heatmap an image row r is the `grid × grid` block on the matrix diagonal
spanning indices r·grid … r·grid + grid − 1.

Every pattern score is in [0, 1] and reads as "how much of the map's 1s this structure
explains, beyond what scattered 1s would give", so scores are comparable across patterns and
the label is their argmax. The paper's definitions:

- diagonal: each patch attends one patch at a fixed offset: itself, its left/right or up/down
  neighbour (diagonals t = s + d), or its mirror in the same image row, (r, c) -> (r, grid-1-c)
  (counter-diagonal: "the left/right patches symmetrically attend to the right/left ones in the
  same row");
- horizontal: "a patch attends to multiple patches before/after itself in the same row": short
  runs inside the source's own image-row block of the heatmap, usually mixed with the diagonal;
- vertical: many sources attend the same target patches (long heatmap columns);
- block: the patches of a local region mutually attend (square bicliques spanning image rows).

Each in-row 1 (s, t) (same image row, t ≠ s) carries a horizontal weight η ∈ [0, 1], the
smaller of its source's and its target's row confinement (`_row_confinement`: ≥ 2 other
patches of the own image row, denser than elsewhere and than any other image row);
horizontal = Σ η / #1s, and the diagonal and block credits of that 1 are multiplied by 1 − η,
so a 1 is never claimed twice by those three.
A lone in-row neighbour (left, right, counter) is not horizontal (≥ 2 needed); a run of in-row
neighbours is horizontal, not diagonal, even though it lies on diagonals d = ±1, ±2, …; a full
image row attending itself is horizontal, not a 1 × grid block. A long heatmap row (one source
attending many targets anywhere) is none of the paper's patterns and scores ~0 everywhere: it is
not confined to the source's image row, covers each diagonal once, is no column, and is far from
square. Scattered noise scores ~0 on every pattern. All work is batched (no Python loop over
patches or heads); the closure costs two `[N, N]` matmuls per map.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitscope.vocab import BASE_PATTERNS, OFFSETS, PATTERNS

__all__ = ["BASE_PATTERNS", "OFFSETS", "PATTERNS", "labels_from_scores", "offset_scores", "pattern_labels",
           "pattern_scores"]  # the names: vitscope.vocab

# A map is "none" when no base pattern explains at least this share of its 1s beyond chance. Scattered
# top-1 % noise (2000 maps, exactly ceil(1 % · N²) ones) never scored above 0.14 on an 8 × 8 grid and 0.06
# on 14 × 14 (its highest pattern is vertical, from columns hit twice by chance); long heatmap rows ≤ 0.03.
NONE_BELOW = 0.2
# A second pattern is reported when the runner-up too clears that cut (the paper's Fig. 13 J/K: a diagonal
# drawn together with horizontal runs).
SECOND_ABOVE = NONE_BELOW
NONE = PATTERNS.index("none")


def _as_float(binary: Tensor, grid: int) -> tuple[Tensor, int]:
    """Exact 0/1 float copy `[..., N, N]`: float64 for float64 input, else float32 (counts exact to 2^24)."""
    n = grid * grid
    if grid < 1 or binary.ndim < 2 or tuple(binary.shape[-2:]) != (n, n):
        raise ValueError(f"expected a binarised patch map of shape [..., {n}, {n}] for grid {grid}, "
                         f"got {tuple(binary.shape)}")
    dtype = torch.float64 if binary.dtype == torch.float64 else torch.float32
    return (binary != 0).to(dtype), n


def _above_chance(hits: Tensor, length: Tensor, density: Tensor) -> Tensor:
    """Coverage hits/length rescaled so chance (the map's density ρ) is 0 and full is 1: (cov-ρ)/(1-ρ)."""
    cov = hits / length.clamp_min(1)
    rho = density.unsqueeze(-1)  # [..., 1]
    return ((cov - rho) / (1 - rho).clamp_min(1e-12)).clamp(0, 1) * (length > 0)


def _mirror(grid: int, device=None) -> Tensor:
    """`[N]` counter-diagonal target of each source: its mirror (r, grid-1-c) in the same image row."""
    s = torch.arange(grid * grid, device=device)
    return s + grid - 1 - 2 * (s % grid)


def _offset_targets(grid: int, device=None) -> tuple[Tensor, Tensor]:
    """Target index `[6, N]` of each source for each offset in OFFSETS, and its validity `[6, N]`.

    Sources without the neighbour (left of column 0, above row 0, …) are invalid, so a perfect
    "left" head still has coverage 1. Counter-diagonal entries that coincide with another
    offset's entry (the middle column's mirror is itself for odd grids, the two middle columns
    mirror onto their left/right neighbour for even grids) are invalid too, so the six diagonals
    are disjoint.
    """
    n = grid * grid
    s = torch.arange(n, device=device)
    r, c = s // grid, s % grid
    tgt = torch.stack([s, s - 1, s + 1, s - grid, s + grid, _mirror(grid, device)])  # [6, N]
    valid = torch.stack([torch.ones_like(s, dtype=torch.bool), c > 0, c < grid - 1, r > 0, r < grid - 1,
                         torch.ones_like(s, dtype=torch.bool)])  # [6, N]
    clash = ((tgt[:5] == tgt[5]) & valid[:5]).any(0)  # [N] counter entry already on another diagonal
    valid[5] &= ~clash
    return tgt.clamp(0, n - 1), valid


def offset_scores(binary: Tensor, grid: int) -> Tensor:
    """`[..., 6]` in [0, 1]: how completely each diagonal of OFFSETS is drawn, above chance.

    Offsets: self t = s, left s-1, right s+1, up s-grid, down s+grid, counter = the mirror of the
    source in its own image row, (r, c) -> (r, grid-1-c). Score = (coverage − ρ)/(1 − ρ),
    coverage = share of the sources (that have the neighbour) whose offset target is 1, ρ =
    density of the map. A perfect "up" head scores 1 on "up"; a diagonal that random 1s hit only
    at the map's density scores 0, so dense or line-shaped maps do not look diagonal.
    """
    return _offset_scores(*_as_float(binary, grid), grid)


def _offset_scores(b: Tensor, n: int, grid: int) -> Tensor:
    tgt, valid = _offset_targets(grid, b.device)  # [6, N]
    src = torch.arange(n, device=b.device).expand_as(tgt)  # [6, N]
    hits = (b[..., src, tgt] * valid).sum(-1)  # [..., 6]
    density = b.sum((-2, -1)) / (n * n)  # [...]
    return _above_chance(hits, valid.sum(-1).to(b.dtype), density)


def _diagonal_hits(b: Tensor) -> Tensor:
    """`[..., 2N-1]` sum of the entries on each diagonal t = s + d, d = -(N-1)..N-1 (d + N - 1 indexes).

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


def _row_confinement(per_row: Tensor, selfs: Tensor, grid: int) -> Tensor:
    """`[M, N]` in [0, 1]: how much patch s's attention is a horizontal run in its own image row.

    `per_row` `[M, N, grid]` = 1s of patch s per image row of the patches it attends (or, on the
    target side, of the patches attending it), `selfs` `[M, N]` = its self-attention. With h =
    its 1s in its own image row except itself, o = the most 1s in any other image row, and e =
    the in-row 1s expected if its off-row 1s were scattered at their own density (off-row 1s ·
    (grid − 1)/(N − grid)):

        w_s = [h ≥ 2] · (1 − e/h)⁺ · (1 − (o − 1)⁺ / h)⁺

    - h ≥ 2: "multiple patches before/after itself"; one in-row target (left, right, counter)
      is a diagonal offset, not horizontal. A ±1 run (self + left + right) is the borderline
      case: its edge patches have a single in-row neighbour, so it is horizontal on large grids
      and diagonal on small ones; runs of ±2 and more are horizontal on any grid;
    - (1 − e/h): chance correction: the in-row density must exceed the density elsewhere, so
      long heatmap rows (a source attending many targets anywhere) and dense noise weigh ~0;
    - (1 − (o − 1)/h): the own row must beat every other image row, so a patch inside a 2-D
      block (whose neighbouring image rows hold as many 1s as its own) weighs 0; one stray 1 in
      another row is forgiven as scatter, so sparse noise barely lowers a clean run.
    """
    n = per_row.shape[-2]
    own_row = torch.nn.functional.one_hot(torch.arange(n, device=per_row.device) // grid, grid).bool()  # [N, grid]
    h = (per_row * own_row).sum(-1) - selfs  # [M, N] in-row 1s except self
    o = per_row.masked_fill(own_row, 0).amax(-1)  # [M, N]
    off_row = per_row.sum(-1) - h - selfs  # [M, N]
    e = off_row * (grid - 1) / max(n - grid, 1)
    hc = h.clamp_min(1)
    return (h >= 2) * (1 - e / hc).clamp_min(0) * (1 - (o - 1).clamp_min(0) / hc).clamp_min(0)


def _horizontal_weights(b: Tensor, grid: int) -> Tensor:
    """`[M, grid, grid, grid]` η[m, r, c_s, c_t] of each in-row 1 ((r, c_s) -> (r, c_t), c_t ≠ c_s).

    η = min(source's, target's row confinement). Two-sided: the source must run along its image
    row and the target must be attended along its image row (the confinement of the transposed
    map). A horizontal head satisfies both (each patch attends, and is attended by, several
    patches of its row); a sparsely sampled 2-D block often gives one source two in-row 1s and at
    most one per other row, but rarely also its target, so sparse blocks stay blocks. It also
    makes η(bᵀ) = η(b)ᵀ, as "same image row" is symmetric. Only the image-row blocks on the
    matrix diagonal can hold in-row 1s, so η is kept in that compact form (N·grid per map).
    """
    m, n = b.shape[0], b.shape[-1]
    s = torch.arange(n, device=b.device)
    selfs = b[:, s, s]  # [M, N]
    w_src = _row_confinement(b.reshape(m, n, grid, grid).sum(-1), selfs, grid)  # [M, N]
    w_tgt = _row_confinement(b.reshape(m, grid, grid, n).sum(2).transpose(1, 2), selfs, grid)  # [M, N]
    blocks = torch.diagonal(b.reshape(m, grid, grid, grid, grid), dim1=1, dim2=3).permute(0, 3, 1, 2)  # [M, r, cs, ct]
    off_self = ~torch.eye(grid, dtype=torch.bool, device=b.device)  # [grid, grid]
    w = torch.minimum(w_src.reshape(m, grid, grid, 1), w_tgt.reshape(m, grid, 1, grid))  # [M, r, cs, ct]
    return blocks * off_self * w


def _diagonal_score(b: Tensor, eta: Tensor, grid: int, n: int, count: Tensor, density: Tensor) -> Tensor:
    """Share of 1s on well-covered diagonals: Σ_d κ_d · (hits_d − η_d) / #1s over t = s + d and the counter-diagonal.

    κ_d is the above-chance coverage of diagonal d in `b`; η_d (the horizontal weights on d) is
    the part of its 1s the horizontal pattern already took, so in-row runs drawn on d = ±1, ±2, …
    are not diagonal. Only diagonals at least one grid row long (|d| ≤ N − grid) count, so short
    corner diagonals hit once by noise are not "full". The ordinary diagonals partition the
    matrix; a counter-diagonal 1 (s, mirror(s)) takes the larger of its diagonal's κ and the
    counter's κ. `b` is `[M, N, N]`, `eta` `[M, grid, grid, grid]`.
    """
    dev = b.device
    d = torch.arange(-(n - 1), n, device=dev)  # [2N-1]
    length = (n - d.abs()) * (d.abs() <= n - grid)  # [2N-1]; too-short diagonals get length 0 -> κ 0
    hits = _diagonal_hits(b)  # [M, 2N-1]
    kappa = _above_chance(hits, length.to(b.dtype), density)  # [M, 2N-1]
    free = hits.clone()
    free[:, n - grid:n + grid - 1] -= _diagonal_hits(eta.sum(1))  # in-row 1s sit on |d| < grid: t - s = ct - cs
    explained = (kappa * free).sum(-1)  # [M]
    s = torch.arange(n, device=dev)
    mirror = _mirror(grid, dev)  # [N]; entry (s, mirror) lies on diagonal d = mirror - s
    anti = b[:, s, mirror]  # [M, N]
    kappa_c = _above_chance(anti.sum(-1, keepdim=True), torch.full((1,), float(n), device=dev, dtype=b.dtype),
                            density)  # [M, 1]
    kappa_d = kappa[:, mirror - s + n - 1]  # [M, N]
    c = torch.arange(grid, device=dev)
    anti_free = anti - eta[:, :, c, grid - 1 - c].reshape(-1, n)  # [M, N] (r, c) -> (r, grid-1-c)
    explained = explained + (anti_free * (torch.maximum(kappa_d, kappa_c) - kappa_d)).sum(-1)
    return explained / count.clamp_min(1)


def _line_score(b: Tensor, lines: Tensor, cross: Tensor, count: Tensor) -> Tensor:
    """Share of 1s on lines (rows of `b`) that are longer than the lines they cross, beyond noise.

    For each row: m = mean count of the columns its 1s sit in, weight (1 − (m + √m)/R)⁺, R = row
    count; √m allows for Poisson scatter, so random 1s and diagonals (R ≈ m) weigh ~0 while a
    row much longer than its columns weighs ~1. A hot column crossing diagonal rows makes m large
    for those rows, so it does not make them look like lines. Used on the transposed map for the
    vertical pattern (long heatmap columns).
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


def _core_block_score(b: Tensor, eta: Tensor, rows: Tensor, cols: Tensor, count: Tensor) -> Tensor:
    """Concentration of the 1s into one square core sub-block, found from the marginals.

    Core = rows × columns with at least the mean count. Score = share of the credit left by the
    horizontal pattern (1 − η per 1) in the core · min(row, column concentration beyond chance) ·
    squareness(#core rows, #core columns) · (1 − 1/min(mean credit per core row, per core
    column)). This catches a block even when binarisation keeps only a sparse sample of it
    (sources of a region attending different targets of the region), which the closure term
    cannot; scattered noise scores ~0, and a core made of in-row runs (one image row attending
    itself) is horizontal, not block.
    """
    n = rows.shape[-1]
    mean = (count / n).unsqueeze(-1)  # [..., 1]
    in_r = ((rows >= mean) & (rows > 0)).to(b.dtype)  # [M, N]
    in_c = ((cols >= mean) & (cols > 0)).to(b.dtype)
    nr, nc = in_r.sum(-1), in_c.sum(-1)  # [...]
    inside = (in_r.unsqueeze(-2) @ b @ in_c.unsqueeze(-1)).squeeze(-1).squeeze(-1)  # [M]
    m, grid = eta.shape[0], eta.shape[1]
    inside = inside - torch.einsum("mrc,mrcd,mrd->m", in_r.reshape(m, grid, grid), eta, in_c.reshape(m, grid, grid))
    share = inside / count.clamp_min(1)
    conc = torch.minimum(_concentration(rows, count), _concentration(cols, count))
    square = torch.minimum(nr, nc) / torch.maximum(nr, nc).clamp_min(1)
    per_line = torch.minimum(inside / nr.clamp_min(1), inside / nc.clamp_min(1))  # mean credit per core row/col
    return share * conc * square * (1 - 1 / per_line.clamp_min(1))


def _closure_block_score(b: Tensor, eta: Tensor, rows: Tensor, cols: Tensor, count: Tensor) -> Tensor:
    """Share of 1s inside dense square bicliques, any number of them, anywhere in the matrix.

    Per 1 at (s,t): closure = share of the (R_s−1)(C_t−1) rectangles through it whose fourth
    corner is 1 (1 in a complete biclique, ≈ density ρ for scattered 1s, so rescaled to
    (closure − ρ)/(1 − ρ)), times squareness min/max(R_s, C_t), (1 − 1/min(R_s, C_t)) to
    discount 2×2 accidents, and 1 − η (in-row runs are horizontal). `b` is `[M, N, N]`, `eta`
    `[M, grid, grid, grid]`; the weights are evaluated at the 1s only.
    """
    corners = torch.bmm(torch.bmm(b, b.transpose(-1, -2)), b)  # [M, N, N] #(s',t') with B[s,t'] B[s',t] B[s',t']
    m, s, t = b.nonzero(as_tuple=True)  # [E] each, E = number of 1s in the batch
    a_, c_ = rows[m, s], cols[m, t]  # [E]
    rect = (corners[m, s, t] - a_ - c_ + 1).clamp_min(0)  # drop the trivial s' = s or t' = t terms
    possible = (a_ - 1) * (c_ - 1)
    lo, hi = torch.minimum(a_, c_), torch.maximum(a_, c_)
    rho = count[m] / b.shape[-1] ** 2  # [E] density of the entry's map
    closure = ((rect / possible.clamp_min(1) - rho) / (1 - rho).clamp_min(1e-12)).clamp_min(0) * (possible > 0)
    grid = eta.shape[1]
    eta_e = eta[m, s // grid, s % grid, t % grid] * (s // grid == t // grid)  # [E] η of each 1
    weight = closure * (lo / hi) * (1 - 1 / lo) * (1 - eta_e)  # [E]
    total = torch.zeros_like(count).index_add_(0, m, weight)  # [M]
    return total / count.clamp_min(1)


def pattern_scores(binary: Tensor, grid: int) -> Tensor:
    """`[..., 4]` in [0, 1], order BASE_PATTERNS: how much of the map each base pattern explains.

    With R_s = 1s in row s, C_t = 1s in column t, n = all 1s, η = horizontal weight of each
    in-row 1 (`_horizontal_weights`: the source attends, and the target is attended by, ≥ 2
    other patches of its own image row, denser than elsewhere and than any other image row):

    - diagonal = Σ_d κ_d·Σ(1 − η) over diagonal d / n, κ_d = above-chance coverage of diagonal
      t = s+d (and of the counter-diagonal (r, c) -> (r, grid-1-c)): the share of 1s on the
      well-drawn diagonals that are not part of an in-row run;
    - horizontal = Σ η / n: the share of 1s in horizontal runs inside the sources' own image rows
      (a long heatmap row attending targets anywhere scores ~0);
    - vertical = share of 1s on heatmap columns much longer than the rows they cross (see
      `_line_score`): many sources attending the same targets, insensitive to scattered noise
      and to diagonals;
    - block = max of two views of "patches of a local region mutually attend": the 1s in
      complete square bicliques (closure, any number of blocks), and the concentration of the
      1s into one square core sub-block (also when the block is only sparsely sampled), both
      crediting a 1 only by 1 − η.

    An empty map scores 0 everywhere.
    """
    return _pattern_scores(*_as_float(binary, grid), grid)


def _pattern_scores(b: Tensor, n: int, grid: int) -> Tensor:
    batch = b.shape[:-2]
    b = b.reshape(-1, n, n)  # [M, N, N]
    count = b.sum((-2, -1))  # [M]
    rows = b.sum(-1)  # [M, N] R_s
    cols = b.sum(-2)  # [M, N] C_t
    eta = _horizontal_weights(b, grid)  # [M, grid, grid, grid]
    diagonal = _diagonal_score(b, eta, grid, n, count, count / (n * n))
    horizontal = eta.sum((1, 2, 3)) / count.clamp_min(1)
    vertical = _line_score(b.transpose(-1, -2), cols, rows, count)
    block = torch.maximum(_closure_block_score(b, eta, rows, cols, count),
                          _core_block_score(b, eta, rows, cols, count))
    return torch.stack([diagonal, horizontal, vertical, block], -1).clamp(0, 1).reshape(*batch, 4)


def labels_from_scores(scores: Tensor) -> tuple[Tensor, Tensor]:
    """(pattern `[...]`, second pattern `[...]`), int64 indices into PATTERNS, from `pattern_scores` `[..., 4]`.

    The pattern is the best-scoring base pattern, or "none" when even it explains less than NONE_BELOW of
    the map beyond chance (empty maps, scattered noise, long heatmap rows). The second is the runner-up
    when it explains at least SECOND_ABOVE too, else "none". Ties go to the earlier base pattern.
    """
    value, order = torch.sort(scores, dim=-1, descending=True, stable=True)  # [..., 4]
    first = torch.where(value[..., 0] >= NONE_BELOW, order[..., 0], NONE)
    second = torch.where(value[..., 1] >= SECOND_ABOVE, order[..., 1], NONE)
    return first, second


def pattern_labels(binary: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """(pattern index `[...]`, best offset index `[...]`), int64, into PATTERNS and OFFSETS.

    The pattern is that of `labels_from_scores` ("none" for a map no base pattern explains beyond
    chance); the offset is the argmax of `offset_scores` and is meaningful when the pattern is "diagonal".
    """
    b, n = _as_float(binary, grid)  # [..., N, N]
    return labels_from_scores(_pattern_scores(b, n, grid))[0], _offset_scores(b, n, grid).argmax(-1)
