"""tSNE layouts: clusters stay apart, seeded, the openTSNE branch for large N, tiny and bad inputs."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from vitscope.analysis import layout
from vitscope.analysis.layout import tsne_2d


def _two_clusters(n_each: int = 100, dim: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n_each, dim))  # [N, D]
    x[n_each:, 0] += 12.0  # far apart along one axis
    return x.astype(np.float32), np.repeat([0, 1], n_each)


def _nn1_accuracy(y: np.ndarray, labels: np.ndarray) -> float:
    d = np.linalg.norm(y[:, None] - y[None], axis=-1)  # [N, N]
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(1)] == labels).mean())


@pytest.fixture
def coarse_fft(monkeypatch):
    """openTSNE's FFT grid has >= 50 intervals per axis whatever N is (~8 s for 100 points); a coarser
    grid keeps the real openTSNE path under a second for test-sized inputs."""
    import openTSNE

    monkeypatch.setattr(openTSNE, "TSNE", functools.partial(openTSNE.TSNE, min_num_intervals=10))


@pytest.mark.parametrize("threshold", [10_000, 50], ids=["sklearn", "opentsne"])
def test_keeps_two_clusters_apart_and_is_normalised(threshold, coarse_fft):
    x, labels = _two_clusters()
    y = tsne_2d(x, exact_threshold=threshold)
    assert y.shape == (200, 2) and y.dtype == np.float32
    assert _nn1_accuracy(y, labels) >= 0.95
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    assert y.std() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("threshold", [10_000, 50], ids=["sklearn", "opentsne"])
def test_deterministic_for_a_seed(threshold, coarse_fft):
    x, _ = _two_clusters(60)
    np.testing.assert_array_equal(
        tsne_2d(x, seed=1, exact_threshold=threshold), tsne_2d(x, seed=1, exact_threshold=threshold)
    )


@pytest.mark.parametrize("threshold", [10_000, 50], ids=["sklearn", "opentsne"])
def test_progress_counts_every_iteration(threshold, coarse_fft):
    """A build's progress bar is sized by `iterations`: the callback must add up to exactly that."""
    x, labels = _two_clusters(60)
    steps: list[int] = []
    y = tsne_2d(x, exact_threshold=threshold, progress=steps.append)
    assert sum(steps) == layout.iterations(len(x), threshold)
    assert len(steps) == (1 if threshold > len(x) else layout.iterations(len(x), threshold) // 25)
    assert _nn1_accuracy(y, labels) >= 0.95
    silent = tsne_2d(x, exact_threshold=threshold)  # reporting progress changes nothing in the layout
    np.testing.assert_array_equal(y, silent)


def test_iterations_and_trivial_inputs_report_progress():
    assert layout.iterations(3) == 0 and layout.iterations(2000) == 1000 and layout.iterations(2001) == 375
    steps: list[int] = []
    tsne_2d(np.ones((50, 4)), progress=steps.append)  # constant input: no tSNE, still done in full
    assert sum(steps) == layout.iterations(50)
    tsne_2d(np.zeros((3, 4)), progress=steps.append)
    assert sum(steps) == layout.iterations(50)


@pytest.mark.slow
def test_opentsne_with_default_grid():
    x, labels = _two_clusters(60)
    assert _nn1_accuracy(tsne_2d(x, exact_threshold=50), labels) >= 0.95


def test_branch_follows_exact_threshold(monkeypatch):
    calls = []

    def fake(name):
        def run(x, *, seed, perplexity, progress):
            calls.append((name, len(x), perplexity))
            return np.random.default_rng(seed).normal(size=(len(x), 2))

        return run

    monkeypatch.setattr(layout, "_tsne_sklearn", fake("sklearn"))
    monkeypatch.setattr(layout, "_tsne_opentsne", fake("opentsne"))
    x, _ = _two_clusters(30)  # N = 60
    tsne_2d(x, exact_threshold=60)
    tsne_2d(x, exact_threshold=59)
    assert [c[0] for c in calls] == ["sklearn", "opentsne"]
    tsne_2d(x[:10], perplexity=30.0)  # perplexity clipped so that 3 * perplexity < N - 1
    assert calls[-1][2] * 3 < 10 - 1


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5])
def test_tiny_inputs(n):
    x = np.random.default_rng(n).normal(size=(n, 6))
    y = tsne_2d(x)
    assert y.shape == (n, 2) and y.dtype == np.float32 and np.isfinite(y).all()


def test_constant_and_duplicate_input():
    np.testing.assert_array_equal(tsne_2d(np.ones((50, 4))), np.zeros((50, 2), dtype=np.float32))
    y = tsne_2d(np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    assert np.isfinite(y).all() and np.array_equal(y[0], y[1]) and not np.array_equal(y[0], y[2])


def test_nan_or_bad_shape_raises():
    x, _ = _two_clusters(20)
    x[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*row 7"):
        tsne_2d(x)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        tsne_2d(np.zeros((2, 3, 4)))
