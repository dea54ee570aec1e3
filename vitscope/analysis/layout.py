"""2-D tSNE layouts for the Image Overview and the Attention Pattern View (paper Sec. 5.2, 5.4).

scikit-learn's Barnes-Hut tSNE is quick up to ~2k points (the demo's 1000 images); the Attention Pattern View
lays out images × layers × heads points (24k for the demo, 144k for 1000 images of a ViT-B), where openTSNE's
FFT-accelerated gradients scale. openTSNE runs 125 + 250 iterations (early exaggeration, then the rest) instead
of its 250 + 500 and finds neighbours exactly up to 30k points: quicker on the demo and the real ViT-Ti, with the
same kNN class, layer, offset and pattern purity (docs/performance.md; `python benchmarks/layouts.py`).

Large sets (a ViT-B's 1.44 M head points at 10k images) are fitted on a seeded sample of `FIT_POINTS` and the
rest placed by the fitted embedding's own `transform` (openTSNE), chunk by chunk: each new point is optimised
against the fixed sample only, so chunks are independent and can run anywhere (`Reference`). Placed points never
see each other, so their fine neighbourhoods are loose; `refine` then optimises the whole layout together for a
few iterations, on neighbours found through the sample (no all-points index). A store keeps what rebuilds the
`Reference` (which points were the sample, their positions, the frame: `fit_layout`'s record), never a pickle, so
that a new image is placed the same way later.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["FIT_POINTS", "REFINE_ITER", "Reference", "fit_layout", "fit_sample", "iterations", "refine", "tsne_2d"]

_SMALL_N = 1000  # below this many points tSNE runs single-threaded
EXACT_THRESHOLD = 2000  # up to this many points scikit-learn, above openTSNE
EARLY_ITER, LATE_ITER = 125, 250  # openTSNE: early-exaggeration and final iterations
SKLEARN_ITER = 1000  # scikit-learn's default max_iter
_EXACT_NEIGHBOURS = 30_000  # openTSNE: exact kNN up to here (faster than Annoy at the demo's 24k), Annoy above
_TICK = 25  # openTSNE reports progress every this many iterations
# Fit on every point up to here, on a seeded sample of this many above: the demo's 24k head points and the real
# ViT-Ti's 7.2k keep their full fit; at 1.44 M points the fit costs what the demo's does and the transform scales
# linearly (docs/performance.md: the sample's quality loss and the transform's cost per point).
FIT_POINTS = 30_000
PCA_DIMS = 50  # a sampled layout's features above this many dimensions are reduced to their top principal components
# (a ViT-B's 393-d CLS vectors: the transform's exact neighbour search over 1.4 M points costs far less at 50-d)
# openTSNE's transform: iterations, neighbours for the initial place, perplexity, exaggeration (see Reference)
TRANSFORM_ITER, TRANSFORM_K, TRANSFORM_PERPLEXITY, TRANSFORM_EXAGGERATION = 100, 25, 5.0, 1.5
TRANSFORM_INIT = "median"
# refine: iterations of the whole layout after the transform, each point's neighbours in its affinities, and about
# how many candidates each point's neighbours are sought among (the points of the sample lists nearest its own)
REFINE_ITER, REFINE_K, REFINE_POOL = 50, 10, 512
_REFINE_TICK = 10

Progress = Callable[[int], None] | None  # called with the number of iterations just run


def iterations(n: int, exact_threshold: int = EXACT_THRESHOLD) -> int:
    """Iterations `tsne_2d` runs (and reports to `progress`) for n points: the total of a progress bar."""
    if n <= 3:
        return 0
    return SKLEARN_ITER if n <= exact_threshold else EARLY_ITER + LATE_ITER


def tsne_2d(
    x: np.ndarray,
    *,
    seed: int = 0,
    perplexity: float = 30.0,
    exact_threshold: int = EXACT_THRESHOLD,
    progress: Progress = None,
) -> np.ndarray:
    """Seeded tSNE of [N, D] features → float32 [N, 2], centred and scaled to unit std.

    Up to `exact_threshold` points scikit-learn (init="pca"), above it openTSNE (FFT gradients, PCA init).
    Perplexity is clipped for small N; N <= 3 or constant input gives a PCA (or all-zero) layout,
    since tSNE is undefined there. The unit scale keeps plots and density contours comparable.
    `progress(k)` is told of every k iterations run (openTSNE: every 25; scikit-learn: all at the end),
    `iterations(N)` in all.
    """
    y = _tsne_raw(x, seed=seed, perplexity=perplexity, exact_threshold=exact_threshold, progress=progress)
    return _normalise(y) if len(y) else np.zeros((0, 2), np.float32)


def _check(x: np.ndarray, what: str = "tsne_2d") -> np.ndarray:
    """[N, D] (or [N]) finite features as float64 [N, D]; one clear error otherwise."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]  # [N] → [N, 1]
    if x.ndim != 2:
        raise ValueError(f"{what} expects features of shape [N, D], got {x.shape}")
    x = x.astype(np.float64, copy=False)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"{what}: {len(rows)} of {len(x)} rows contain NaN or inf (first: row {rows[0]}); "
            "drop or fill them before the layout"
        )
    return x


def _tsne_raw(x: np.ndarray, *, seed: int, perplexity: float, exact_threshold: int, progress: Progress,
              ) -> np.ndarray:
    """tsne_2d before its normalisation, float64 [N, 2]."""
    x = _check(x)
    n = len(x)
    if n == 0:
        return np.zeros((0, 2))
    if n <= 3 or np.ptp(x, axis=0).max(initial=0.0) == 0.0:
        if progress is not None and iterations(n, exact_threshold):
            progress(iterations(n, exact_threshold))  # nothing to iterate: done at once
        return _pca_2d(x)
    # Both libraries need 3 * perplexity < N - 1 (the neighbour lists hold 3 * perplexity points).
    perp = float(max(1.0, min(perplexity, (n - 2) / 3.0)))
    if n > exact_threshold:
        return _tsne_opentsne(x, seed=seed, perplexity=perp, progress=progress)
    return _tsne_sklearn(x, seed=seed, perplexity=perp, progress=progress)


def fit_sample(n: int, seed: int = 0, fit_points: int = FIT_POINTS) -> np.ndarray:
    """Sorted indices of the points a layout of n points is fitted on: all up to `fit_points`, else a seeded
    sample of that many."""
    if n <= fit_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, fit_points, replace=False))


def fit_layout(x_sample: np.ndarray, points: int, *, seed: int = 0, exact_threshold: int = EXACT_THRESHOLD,
               progress: Progress = None) -> tuple[np.ndarray, dict]:
    """tsne_2d of a layout's fit sample (`points` in the whole layout) → (float32 [n, 2] positions, its record).

    A sample smaller than the layout (a sampled fit) is laid out on its top `PCA_DIMS` principal components
    when it has more dimensions. The record (JSON: `points`, `sample`, `pca`, the normalisation's `shift` and
    `scale`) plus the sample's features and positions rebuild the fitted layout as a `Reference`; with the full
    set (sample == points) the positions are exactly `tsne_2d`'s.
    """
    x = _check(x_sample, "fit_layout")
    pca = PCA_DIMS if len(x) < points and x.shape[1] > PCA_DIMS else 0
    y = _tsne_raw(_Basis(x, pca).reduce(x), seed=seed, perplexity=30.0, exact_threshold=exact_threshold,
                  progress=progress)
    shift = y.mean(axis=0) if len(y) else np.zeros(2)
    scale = float((y - shift).std()) if len(y) else 0.0
    record = {"points": int(points), "sample": len(x), "pca": pca, "shift": [float(v) for v in shift],
              "scale": scale if scale > 0 else 1.0}
    return (_normalise(y) if len(y) else np.zeros((0, 2), np.float32)), record


class _Basis:
    """The top `dims` principal directions of a sample (none: identity), computed the same way wherever the
    sample is: the build, a Dask worker, the service placing a new image."""

    def __init__(self, x: np.ndarray, dims: int) -> None:
        self.mean = self.axes = None
        if dims and x.shape[1] > dims:
            self.mean = x.mean(axis=0)
            _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)  # [min(n, D), D]
            sign = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])  # deterministic orientation
            self.axes = (vt * np.where(sign == 0, 1.0, sign)[:, None])[:dims].T  # [D, dims]

    def reduce(self, x: np.ndarray) -> np.ndarray:
        return x if self.axes is None else (x - self.mean) @ self.axes


class Reference:
    """A fitted layout, rebuilt from its sample's features, their stored (normalised) positions and `fit_layout`'s
    record; `place` embeds new points into it with openTSNE's `transform`.

    Each new point is optimised against the fixed sample only (its 15 nearest sample points by perplexity 5,
    median initialisation, `TRANSFORM_ITER` iterations; no randomness): a point's place depends on nothing else
    in its batch, so any split into chunks, in any process, gives the same places. The sample's own neighbour
    graph is not needed for that, so it is built with one neighbour (cheap); its positions are the stored float32
    values, so the build, its Dask workers and the service all start from the same numbers.
    """

    def __init__(self, x_sample: np.ndarray, xy_sample: np.ndarray, record: dict, n_jobs: int = 1) -> None:
        from openTSNE import affinity

        x = _check(x_sample, "Reference")
        if len(x) < 2:
            raise ValueError(f"a layout's transform needs at least 2 fitted points, got {len(x)}")
        self.record, self.n_jobs = record, n_jobs
        self.basis = _Basis(x, int(record.get("pca", 0)))
        self.shift, self.scale = np.asarray(record["shift"], np.float64), float(record["scale"])
        self.raw = np.asarray(xy_sample, np.float64) * self.scale + self.shift  # the fit's own frame
        self.affinities = affinity.PerplexityBasedNN(self.basis.reduce(x), perplexity=1 / 3, k_neighbors=1,
                                                     method="exact", n_jobs=n_jobs, random_state=0)

    def place(self, x: np.ndarray) -> np.ndarray:
        """float32 [N, 2] places of new [N, D] features, in the stored layout's normalised frame."""
        from openTSNE import TSNEEmbedding

        x = _check(x, "Reference.place")
        if len(x) == 0:
            return np.zeros((0, 2), np.float32)
        emb = TSNEEmbedding(self.raw.copy(), self.affinities, negative_gradient_method="fft", n_jobs=self.n_jobs)
        centre = (self.raw.max(axis=0) + self.raw.min(axis=0)) / 2  # transform centres the reference by this
        # The start is the median place of the k nearest sample points: in a small layout (a few hundred points)
        # 25 of them spread over much of it, and 100 steps of 0.1 do not come back (16 images: a stored image
        # placed again landed 2 neighbour spacings away with 25, 0.08 with 1).
        k = min(TRANSFORM_K, max(1, len(self.raw) // 50))
        perplexity = min(TRANSFORM_PERPLEXITY, (len(self.raw) - 1) / 3)
        y = np.asarray(emb.transform(self.basis.reduce(x), n_iter=TRANSFORM_ITER, k=k, perplexity=perplexity,
                                     exaggeration=TRANSFORM_EXAGGERATION, initialization=TRANSFORM_INIT)) + centre
        return ((y - self.shift) / self.scale).astype(np.float32)


def refine(x: np.ndarray, xy: np.ndarray, sample: np.ndarray, record: dict, *, seed: int = 0,
           progress: Progress = None, searched: Progress = None) -> tuple[np.ndarray, dict]:
    """A sampled layout (fit sample plus transformed rest, float32 [N, 2] in the frame of `fit_layout`'s record)
    optimised as a whole: `REFINE_ITER` tSNE iterations without exaggeration over every point's `REFINE_K` nearest
    neighbours in the features x [N, D]. → (float32 [N, 2] centred to unit std, the record of that frame).
    A tSNE of all the points spreads wider than one of the sample, hence the new frame: the `Reference` rebuilt
    from it places new points among the refined ones.

    The transform optimises each placed point against the sample alone, so the placed points' own neighbourhoods
    come out loose (the 10 nearest kept 0.07-0.14 less often than in a full fit; docs/performance.md); this gives
    them back. Neighbours are found through the sample, not an index of all points (Annoy took 5 min for 1.44 M
    16-d points): each point joins the list of its nearest sample point (in the fit's PCA basis, where the
    transform looked too) and its neighbours are sought, exactly in x, among the points of the lists whose sample
    points are nearest its own, about `REFINE_POOL` candidates. `progress(k)` is told of every k iterations,
    `searched(k)` of every k points through the neighbour search (2 N in all: each point's list, then its
    neighbours; minutes at 1.44 M points, before the first iteration).
    """
    from openTSNE import TSNEEmbedding, affinity
    from scipy import sparse

    x = np.asarray(x, np.float32)
    n = len(x)
    if n != len(xy):
        raise ValueError(f"refine: {n} feature rows for {len(xy)} layout points")
    if n <= REFINE_K + 1:
        for tell, steps in ((searched, 2 * n), (progress, REFINE_ITER)):
            if tell is not None:
                tell(steps)
        return np.asarray(xy, np.float32), record
    basis = _Basis(_check(x[sample], "refine"), int(record.get("pca", 0)))
    near = _neighbours_by_sample(x, basis, np.asarray(sample), REFINE_K, searched)  # [N, K]
    p = sparse.csr_matrix((np.full(near.size, 1.0 / REFINE_K), (np.repeat(np.arange(n), REFINE_K), near.ravel())),
                          shape=(n, n))
    shift, scale = np.asarray(record["shift"], np.float64), float(record["scale"])

    def tick(iteration: int, error: float, embedding: np.ndarray) -> bool:
        progress(_REFINE_TICK)
        return False

    emb = TSNEEmbedding(np.asarray(xy, np.float64) * scale + shift, affinity.PrecomputedAffinities((p + p.T) / 2),
                        negative_gradient_method="fft", n_jobs=-1, random_state=seed)
    y = emb.optimize(n_iter=REFINE_ITER, exaggeration=1, momentum=0.8, callbacks=None if progress is None else tick,
                     callbacks_every_iters=_REFINE_TICK)
    y = np.asarray(y)
    shift, scale = y.mean(axis=0), float(y.std()) or 1.0
    return ((y - shift) / scale).astype(np.float32), {**record, "shift": [float(v) for v in shift], "scale": scale}


def _neighbours_by_sample(x: np.ndarray, basis: _Basis, sample: np.ndarray, k: int,
                          searched: Progress = None) -> np.ndarray:
    """Each point's k nearest other points in x (int64 [N, k]), sought among the points whose nearest sample point
    is one of the sample points nearest its own (see `refine`; `searched` as there)."""
    tell = searched or (lambda _: None)
    anchors = basis.reduce(x[sample]).astype(np.float32)  # [S, d]
    own = _nearest(x, anchors, 1, basis.reduce, progress=tell)[:, 0]  # [N]: each point's list
    lists = np.argsort(own, kind="stable")
    starts = np.searchsorted(own[lists], np.arange(len(sample) + 1))
    sizes = np.diff(starts)
    # Each list's points search the nearest lists until about REFINE_POOL candidates, of at most twice the lists
    # an average list would need: lists are uneven (in high-dimensional features some sample points are nearest
    # to thousands of points), and a fixed number of lists made the pools, and the work, 11x larger at 1.44 M.
    probe = int(min(len(sample), max(2, np.ceil(2 * REFINE_POOL * len(sample) / len(x)))))
    probed = _nearest(anchors, anchors, probe)  # [S, probe]: the lists nearest each list, nearest first
    sq = np.einsum("nd,nd->n", x, x)
    near = np.empty((len(x), k), np.int64)
    for a in range(len(sample)):
        members = lists[starts[a]:starts[a + 1]]
        if not len(members):
            continue
        order = probed[a] if probed[a, 0] == a else np.concatenate([[a], probed[a][probed[a] != a]])  # own first
        order = order[:np.searchsorted(np.cumsum(sizes[order]), REFINE_POOL) + 1]
        pool = np.concatenate([lists[starts[b]:starts[b + 1]] for b in order])
        d = sq[members, None] - 2 * (x[members] @ x[pool].T) + sq[None, pool]  # [m, pool]
        d[members[:, None] == pool[None, :]] = np.inf  # not itself
        kk = min(k, len(pool) - 1)
        got = pool[np.argpartition(d, kk - 1, axis=1)[:, :kk]] if kk > 0 else members[:, None]
        near[members] = got[:, np.arange(k) % got.shape[1]]  # fewer candidates than k (tiny layouts): repeated
        tell(len(members))
    return near


def _nearest(x: np.ndarray, anchors: np.ndarray, k: int, reduce: Callable[[np.ndarray], np.ndarray] | None = None,
             block: int = 2048, progress: Callable[[int], None] = lambda _: None) -> np.ndarray:
    """Indices [N, k] of the k anchors nearest each row of x (first `reduce`d to the anchors' space, block by
    block: the full features of 1.44 M points are not copied), each block reported to `progress`."""
    sq = np.einsum("sd,sd->s", anchors, anchors)
    twice = np.ascontiguousarray(-2 * anchors.T)  # [d, S]
    out = np.empty((len(x), k), np.int64)
    for a in range(0, len(x), block):
        q = (x[a:a + block] if reduce is None else reduce(x[a:a + block])).astype(np.float32)
        d = q @ twice
        d += sq  # [b, S]: squared distances up to each row's own |q|², in place (the block's largest array)
        progress(len(q))
        if k == 1:  # each point's own list (argmin: a tenth of argpartition's time over 30,000 anchors)
            out[a:a + block, 0] = d.argmin(axis=1)
            continue
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < len(anchors) else np.tile(np.arange(k), (len(q), 1))
        out[a:a + block] = part[np.arange(len(q))[:, None], np.argsort(np.take_along_axis(d, part, 1), axis=1)]
    return out


def _pca_2d(x: np.ndarray) -> np.ndarray:
    """Top-2 principal-component scores [N, 2] (zero-padded); all zeros for constant input."""
    xc = x - x.mean(axis=0)  # [N, D]
    if not np.any(xc):
        return np.zeros((len(x), 2))
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    s = np.where(s > 1e-9 * s[0], s, 0.0)  # round-off directions (e.g. collinear points) are exactly 0
    scores = u * s  # [N, min(N, D)]
    sign = np.sign(scores[np.abs(scores).argmax(axis=0), range(scores.shape[1])])  # deterministic orientation
    scores = scores * np.where(sign == 0, 1.0, sign)
    out = np.zeros((len(x), 2))
    k = min(2, scores.shape[1])
    out[:, :k] = scores[:, :k]
    return out


def _normalise(y: np.ndarray) -> np.ndarray:
    """Centre and divide by one overall std (keeps the aspect ratio); float32."""
    y = np.asarray(y, dtype=np.float64)
    y = y - y.mean(axis=0)
    std = y.std()
    if std > 0:
        y = y / std
    return y.astype(np.float32)


def _tsne_sklearn(x: np.ndarray, *, seed: int, perplexity: float, progress: Progress) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)  # SKLEARN_ITER, its default
    # (the keyword is max_iter only from 1.5, n_iter before; pyproject allows 1.3)
    # Below ~1000 points each of the 1000 Barnes-Hut iterations is microseconds of work, so a second OpenMP
    # thread gains nothing, and on a busy machine its barriers stall (seen: seconds for 4 points). The limit
    # applies to this thread only.
    with threadpool_limits(1 if len(x) < _SMALL_N else None, user_api="openmp"):
        y = tsne.fit_transform(x)
    if progress is not None:
        progress(SKLEARN_ITER)  # scikit-learn has no callback: a few seconds at this size
    return y


def _tsne_opentsne(x: np.ndarray, *, seed: int, perplexity: float, progress: Progress) -> np.ndarray:
    from openTSNE import TSNE, affinity

    n_jobs = 1 if len(x) < _SMALL_N else -1  # see _tsne_sklearn: more threads only stall on tiny inputs
    # Exact neighbours: quicker than Annoy for the demo's 24k 16-d latents; Annoy beyond (a ViT-B's 144k).
    method = "exact" if len(x) <= _EXACT_NEIGHBOURS else "annoy"
    aff = affinity.PerplexityBasedNN(x, perplexity=perplexity, method=method, n_jobs=n_jobs, random_state=seed)

    def tick(iteration: int, error: float, embedding: np.ndarray) -> bool:
        progress(_TICK)
        return False  # never stop early

    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        initialization="pca",
        early_exaggeration_iter=EARLY_ITER,
        n_iter=LATE_ITER,
        negative_gradient_method="fft",
        n_jobs=n_jobs,
        random_state=seed,
        callbacks=None if progress is None else tick,
        callbacks_every_iters=_TICK,
    )
    return np.asarray(tsne.fit(x, affinities=aff))
