"""2-D tSNE layouts for the Image Overview and the Attention Pattern View (paper Sec. 5.2, 5.4).

scikit-learn's Barnes-Hut tSNE is acceptable up to ~10k points (~1 min on 2 cores); the Attention Pattern View lays out
images × layers × heads points (144k for 1000 images of a ViT-B), where openTSNE's FFT-accelerated
gradients are an order of magnitude faster.
"""

from __future__ import annotations

import numpy as np

__all__ = ["tsne_2d"]

_SMALL_N = 1000  # below this many points tSNE runs single-threaded


def tsne_2d(
    x: np.ndarray,
    *,
    seed: int = 0,
    perplexity: float = 30.0,
    exact_threshold: int = 10_000,
    progress: bool = False,
) -> np.ndarray:
    """Seeded tSNE of [N, D] features → float32 [N, 2], centred and scaled to unit std.

    Up to `exact_threshold` points scikit-learn (init="pca"), above it openTSNE (FFT gradients).
    Perplexity is clipped for small N; N <= 3 or constant input gives a PCA (or all-zero) layout,
    since tSNE is undefined there. The unit scale keeps plots and density contours comparable.
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


def _tsne_sklearn(x: np.ndarray, *, seed: int, perplexity: float, progress: bool) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, verbose=int(progress))
    # Below ~1000 points each of the 1000 Barnes-Hut iterations is microseconds of work, so a second OpenMP
    # thread gains nothing, and on a busy machine its barriers stall (seen: 7 s for 4 points). The limit
    # applies to this thread only.
    with threadpool_limits(1 if len(x) < _SMALL_N else None, user_api="openmp"):
        return tsne.fit_transform(x)


def _tsne_opentsne(x: np.ndarray, *, seed: int, perplexity: float, progress: bool) -> np.ndarray:
    from openTSNE import TSNE

    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        initialization="pca",
        negative_gradient_method="fft",
        n_jobs=1 if len(x) < _SMALL_N else -1,  # see _tsne_sklearn: more threads only stall on tiny inputs
        random_state=seed,
        verbose=progress,
    )
    return np.asarray(tsne.fit(x))
