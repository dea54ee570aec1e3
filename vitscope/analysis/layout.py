"""2-D tSNE layouts for the Image Overview and the Attention Pattern View (paper Sec. 5.2, 5.4).

scikit-learn's Barnes-Hut tSNE is quick up to ~2k points (4 s for the demo's 1000 images); the Attention
Pattern View lays out images × layers × heads points (24k for the demo, 144k for 1000 images of a ViT-B),
where openTSNE's FFT-accelerated gradients are an order of magnitude faster. openTSNE runs 125 + 250
iterations (early exaggeration, then the rest) instead of its 250 + 500 and finds neighbours exactly up to
30k points: 3× faster on the demo and the real ViT-Ti, with the same kNN class, layer, offset and pattern
purity (docs/performance.md; `python benchmarks/layouts.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["iterations", "tsne_2d"]

_SMALL_N = 1000  # below this many points tSNE runs single-threaded
EXACT_THRESHOLD = 2000  # up to this many points scikit-learn, above openTSNE
EARLY_ITER, LATE_ITER = 125, 250  # openTSNE: early-exaggeration and final iterations
SKLEARN_ITER = 1000  # scikit-learn's default max_iter
_EXACT_NEIGHBOURS = 30_000  # openTSNE: exact kNN up to here (faster than Annoy at the demo's 24k), Annoy above
_TICK = 25  # openTSNE reports progress every this many iterations

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
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]  # [N] → [N, 1]
    if x.ndim != 2:
        raise ValueError(f"tsne_2d expects features of shape [N, D], got {x.shape}")
    x = x.astype(np.float64, copy=False)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"tsne_2d: {len(rows)} of {len(x)} rows contain NaN or inf (first: row {rows[0]}); "
            "drop or fill them before the layout"
        )
    n = len(x)
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    if n <= 3 or np.ptp(x, axis=0).max(initial=0.0) == 0.0:
        if progress is not None and iterations(n, exact_threshold):
            progress(iterations(n, exact_threshold))  # nothing to iterate: done at once
        return _normalise(_pca_2d(x))
    # Both libraries need 3 * perplexity < N - 1 (the neighbour lists hold 3 * perplexity points).
    perp = float(max(1.0, min(perplexity, (n - 2) / 3.0)))
    if n > exact_threshold:
        y = _tsne_opentsne(x, seed=seed, perplexity=perp, progress=progress)
    else:
        y = _tsne_sklearn(x, seed=seed, perplexity=perp, progress=progress)
    return _normalise(y)


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
    # thread gains nothing, and on a busy machine its barriers stall (seen: 7 s for 4 points). The limit
    # applies to this thread only.
    with threadpool_limits(1 if len(x) < _SMALL_N else None, user_api="openmp"):
        y = tsne.fit_transform(x)
    if progress is not None:
        progress(SKLEARN_ITER)  # scikit-learn has no callback: a few seconds at this size
    return y


def _tsne_opentsne(x: np.ndarray, *, seed: int, perplexity: float, progress: Progress) -> np.ndarray:
    from openTSNE import TSNE, affinity

    n_jobs = 1 if len(x) < _SMALL_N else -1  # see _tsne_sklearn: more threads only stall on tiny inputs
    # Exact neighbours: 4 s for the demo's 24k 16-d latents where Annoy takes 17 s; Annoy beyond (a ViT-B's 144k).
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
