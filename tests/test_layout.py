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


# -- a fit sample and the fitted layout's transform -------------------------------------------------------------

def test_fit_sample_is_everything_when_small_and_seeded_when_large():
    np.testing.assert_array_equal(layout.fit_sample(50, seed=0, fit_points=50), np.arange(50))
    a, b = layout.fit_sample(1000, seed=3, fit_points=100), layout.fit_sample(1000, seed=3, fit_points=100)
    assert len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and np.array_equal(a, b)
    assert not np.array_equal(a, layout.fit_sample(1000, seed=4, fit_points=100))


@pytest.mark.parametrize("threshold", [10_000, 50], ids=["sklearn", "opentsne"])
def test_a_full_fit_is_tsne_2d_and_its_record_rebuilds_the_frame(threshold, coarse_fft):
    x, _ = _two_clusters(60)
    y, record = layout.fit_layout(x, len(x), seed=1, exact_threshold=threshold)
    np.testing.assert_array_equal(y, tsne_2d(x, seed=1, exact_threshold=threshold))  # small stores: as before
    assert record["points"] == record["sample"] == 120 and record["pca"] == 0 and record["scale"] > 0


def test_the_transform_places_new_points_by_the_fitted_layout_in_any_chunks():
    x, labels = _two_clusters(150, dim=60)  # 300 points: fitted on 100, 200 placed
    sample = layout.fit_sample(len(x), seed=0, fit_points=100)
    y, record = layout.fit_layout(x[sample], len(x), seed=0)
    assert record["sample"] == 100 and record["pca"] == layout.PCA_DIMS  # sampled, 60-d: on 50 components
    ref = layout.Reference(x[sample], y, record)
    rest = np.setdiff1d(np.arange(len(x)), sample)
    placed = ref.place(x[rest])
    assert placed.shape == (200, 2) and placed.dtype == np.float32
    # a point's place depends on nothing else in its chunk: any split gives the same places, to the bit
    np.testing.assert_array_equal(placed, np.concatenate([ref.place(x[rest[:7]]), ref.place(x[rest[7:]])]))
    # in the frame of the stored (normalised) layout, beside the fitted points of its own cluster
    xy = np.zeros((len(x), 2), np.float32)
    xy[sample], xy[rest] = y, placed
    assert _nn1_accuracy(xy, labels) >= 0.95
    for c in (0, 1):
        centre = y[labels[sample] == c].mean(0)
        assert np.linalg.norm(placed[labels[rest] == c].mean(0) - centre) < 0.5
    # a fitted point placed again lands where it was fitted
    again = ref.place(x[sample])
    assert np.median(np.linalg.norm(again - y, axis=1)) < 0.05


def _clusters(n: int, dim: int, k: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 4
    return (centres[rng.integers(0, k, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def _exact_neighbours(v: np.ndarray, k: int = 10) -> np.ndarray:
    """Each row's k nearest other rows [N, k], the obvious way: every pair."""
    d = ((v[:, None].astype(np.float64) - v[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1)[:, :k]


def _keep(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Share of each point's k nearest in x that are among its k nearest in y."""
    a, b = _exact_neighbours(x, k), _exact_neighbours(y, k)
    return float(np.mean([len(set(p) & set(q)) / k for p, q in zip(a, b, strict=True)]))


@pytest.mark.parametrize("dim", [10, 60], ids=["raw", "pca"])
def test_neighbours_through_the_sample_are_the_exact_nearest(dim):
    x = _clusters(1200, dim)
    sample = layout.fit_sample(len(x), seed=0, fit_points=120)
    basis = layout._Basis(x[sample].astype(np.float64), layout.PCA_DIMS if dim > layout.PCA_DIMS else 0)
    near = layout._neighbours_by_sample(x, basis, sample, 10)
    exact = _exact_neighbours(x)
    assert near.shape == (1200, 10) and not (near == np.arange(1200)[:, None]).any()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(near, exact, strict=True)])
    assert recall >= 0.97


def test_refine_gives_the_placed_points_their_neighbours_back():
    """Fit on a tenth, place the rest by the transform, refine: each point's 10 nearest in the input come back
    into its 10 nearest in the layout (the transform alone loses a third of them), in a unit frame whose record
    rebuilds a Reference that places a point where the refined layout has it."""
    x = _clusters(1500, 10)
    sample = layout.fit_sample(len(x), seed=0, fit_points=150)
    y_fit, record = layout.fit_layout(x[sample], len(x))
    rest = np.setdiff1d(np.arange(len(x)), sample)
    y = np.empty((len(x), 2), np.float32)
    y[sample], y[rest] = y_fit, layout.Reference(x[sample], y_fit, record).place(x[rest])
    steps, searched = [], []
    refined, frame = layout.refine(x, y, sample, record, progress=steps.append, searched=searched.append)
    assert refined.shape == (1500, 2) and refined.dtype == np.float32 and sum(steps) == layout.REFINE_ITER
    assert sum(searched) == 2 * 1500 and len(searched) > 2  # the search's bar moves before the iterations
    with pytest.raises(ValueError, match="1500 feature rows for 1499 layout points"):
        layout.refine(x, y[:-1], sample, record)
    before, after = _keep(x, y), _keep(x, refined)
    assert after >= before + 0.1 and after >= 0.5, (before, after)
    np.testing.assert_allclose(refined.mean(0), 0.0, atol=1e-4)
    assert refined.std() == pytest.approx(1.0, rel=1e-4) and frame["sample"] == 150
    again = layout.Reference(x[sample], refined[sample], frame).place(x[rest[:50]])
    spacing = np.median(np.sort(((refined[:, None] - refined[None]) ** 2).sum(-1), axis=1)[:, 1]) ** 0.5
    assert np.median(np.linalg.norm(again - refined[rest[:50]], axis=1)) < 5 * spacing
