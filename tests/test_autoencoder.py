"""Pattern autoencoder: fixed-size pooling, exact output sizes, seeded training, pattern separation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitscope.analysis.autoencoder import (
    PatternAutoencoder,
    encode,
    from_flat,
    parameter_count,
    to_flat,
    train_autoencoder,
)
from vitscope.analysis.binary import downsample_binary


@pytest.fixture(autouse=True)
def one_thread():
    """Test-sized convs gain nothing from a 2nd thread, and on a shared machine its barriers stall (10 s seen)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pool_reference(m: np.ndarray, s: int) -> np.ndarray:
    """Loop adaptive max-pool: cell i covers rows floor(i N / S) .. ceil((i+1) N / S) - 1."""
    n = m.shape[0]
    out = np.zeros((s, s), dtype=np.float32)
    for i in range(s):
        for j in range(s):
            r0, r1 = (i * n) // s, math.ceil((i + 1) * n / s)
            c0, c1 = (j * n) // s, math.ceil((j + 1) * n / s)
            out[i, j] = m[r0:r1, c0:c1].max()
    return out


def _families(n_each: int, s: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two clearly different pattern families: shifted diagonals vs vertical stripes, with sparse noise."""
    rng = np.random.default_rng(seed)
    maps = (rng.random((2 * n_each, s, s)) < 0.01).astype(np.uint8)  # [M, S, S]
    idx = np.arange(s)
    for k in range(n_each):
        maps[k, idx, (idx + rng.integers(-2, 3)) % s] = 1  # diagonal, like a local-attention head
        maps[n_each + k, :, rng.integers(0, s)] = 1  # one column, like a head that attends to one patch
    return maps, np.repeat([0, 1], n_each)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 14, 16, 25, 32])
def test_output_size_equals_input_size(size):
    model = PatternAutoencoder(size, latent=7)
    x = torch.rand(3, 1, size, size)
    assert model(x).shape == (3, 1, size, size)
    assert model.encode(x).shape == (3, 7)
    assert model.encode(x[:, 0]).shape == (3, 7)  # [B, S, S] accepted too


@pytest.mark.parametrize("n,size", [(14, 8), (25, 8), (50, 32), (196, 32), (16, 16), (14, 32)])
def test_downsample_keeps_a_single_one(n, size):
    rng = np.random.default_rng(n)
    s = min(n, size)
    for _ in range(5):
        m = np.zeros((n, n), dtype=bool)
        m[rng.integers(n), rng.integers(n)] = True
        out = downsample_binary(torch.from_numpy(m), size)
        assert out.shape == (s, s) and out.dtype == torch.float32
        assert out.sum() >= 1  # max-pool semantics: a lone 1 never disappears
        np.testing.assert_array_equal(out.numpy(), _pool_reference(m.astype(np.float32), s))


def test_downsample_random_maps_and_leading_dims():
    rng = np.random.default_rng(1)
    m = rng.random((2, 3, 25, 25)) < 0.02  # [images, heads, N, N]
    out = downsample_binary(torch.from_numpy(m), 8)
    assert out.shape == (2, 3, 8, 8)
    for a in range(2):
        for b in range(3):
            np.testing.assert_array_equal(out[a, b].numpy(), _pool_reference(m[a, b].astype(np.float32), 8))
    with pytest.raises(ValueError, match="square"):
        downsample_binary(torch.zeros(4, 5, 6))


def test_training_is_deterministic_and_leaves_global_rng_alone():
    maps, _ = _families(32, 16)
    state = torch.get_rng_state()
    m1, l1 = train_autoencoder(maps, epochs=2, batch_size=16, seed=3, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    m2, l2 = train_autoencoder(maps, epochs=2, batch_size=16, seed=3, progress=False)
    assert l1 == l2
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    _, l3 = train_autoencoder(maps, epochs=2, batch_size=16, seed=4, progress=False)
    assert l3 != l1
    assert not m1.training


def test_loss_decreases():
    maps, _ = _families(64, 16)
    _, losses = train_autoencoder(maps, epochs=8, batch_size=16, lr=3e-3, progress=False)
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0]


def test_latents_separate_two_pattern_families():
    from sklearn.linear_model import LogisticRegression

    maps, labels = _families(150, 16)

    def scores(epochs: int) -> tuple[float, float]:
        model, _ = train_autoencoder(maps, latent=8, epochs=epochs, batch_size=16, lr=3e-3, progress=False)
        z = encode(model, maps)  # [M, latent]
        assert z.shape == (300, 8) and z.dtype == np.float32
        d = np.linalg.norm(z[:, None] - z[None], axis=-1)  # [M, M]
        np.fill_diagonal(d, np.inf)
        nn1 = (labels[d.argmin(1)] == labels).mean()  # neighbourhoods are what the tSNE layout keeps
        train = np.arange(len(z)) % 2 == 0  # linear probe: fit on half, score the other half
        probe = LogisticRegression(max_iter=1000).fit(z[train], labels[train]).score(z[~train], labels[~train])
        return nn1, probe

    nn1, probe = scores(10)
    _, probe_untrained = scores(0)  # random projections keep neighbours but do not linearise the families
    assert nn1 >= 0.95
    assert probe >= 0.85 and probe > probe_untrained + 0.1


def test_sparse_maps_do_not_collapse_to_zero():
    rng = np.random.default_rng(0)
    maps = np.zeros((256, 16, 16), dtype=bool)  # ~1 % ones: 2-3 fixed-offset dots per map
    for k in range(256):
        r, c = rng.integers(0, 14, size=2)
        maps[k, r, c] = maps[k, r + 2, c + 2] = True
    model, _ = train_autoencoder(maps, epochs=15, batch_size=16, lr=3e-3, progress=False)
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(maps).float().unsqueeze(1)))[:, 0]  # [M, S, S]
    m = torch.from_numpy(maps)
    assert p[m].mean() > 0.5 > p[~m].mean()  # the ones are reconstructed, not washed out


def test_encode_checks_size_and_accepts_torch():
    model = PatternAutoencoder(8, latent=4)
    z = encode(model, torch.zeros(5, 8, 8, dtype=torch.bool), batch_size=2)
    assert z.shape == (5, 4) and z.dtype == np.float32
    with pytest.raises(ValueError, match="downsample_binary"):
        encode(model, np.zeros((2, 16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[M, S, S\]"):
        train_autoencoder(np.zeros((16, 16)), progress=False)


def _offset_maps(grid: int, n_each: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Self / left / right / up / down diagonals of a grid × grid image (maps of side grid²), each entry kept
    with probability 0.8 plus a few scattered 1s, like binarised attention of offset heads on varied images."""
    rng = np.random.default_rng(seed)
    n = grid * grid
    s = np.arange(n)
    r, c = s // grid, s % grid
    targets = {"self": (s, np.ones(n, bool)), "left": (s - 1, c > 0), "right": (s + 1, c < grid - 1),
               "up": (s - grid, r > 0), "down": (s + grid, r < grid - 1)}
    maps, labels = [], []
    for k, (t, ok) in enumerate(targets.values()):
        for _ in range(n_each):
            m = (rng.random((n, n)) < 0.002).astype(np.uint8)
            keep = ok & (rng.random(n) < 0.8)
            m[s[keep], t[keep]] = 1
            maps.append(m)
            labels.append(k)
    return np.stack(maps), np.asarray(labels)


def _knn_purity(z: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Mean share of each point's k nearest other points (Euclidean) that carry its label."""
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def test_full_resolution_keeps_one_cell_offsets_apart():
    # the demo's 8 × 8 grid gives 64 × 64 maps; trained at that resolution (not pooled to 32 × 32, which
    # merges neighbouring diagonals) the five offsets land in separate latent clusters, packed as the store
    # keeps them
    from vitscope.analysis.autoencoder import PackedMaps
    from vitscope.analysis.binary import pack_binary

    maps, labels = _offset_maps(8, 60)
    packed = PackedMaps(pack_binary(torch.from_numpy(maps).bool(), 64, int(maps.sum((1, 2)).max())), 64)
    model, _ = train_autoencoder(packed, latent=16, epochs=15, batch_size=64, seed=0, progress=False)
    purity = _knn_purity(encode(model, packed), labels)
    assert purity >= 0.95, purity


def test_packed_maps_train_and_encode_like_dense_ones():
    from vitscope.analysis.autoencoder import PackedMaps
    from vitscope.analysis.binary import pack_binary

    maps, _ = _offset_maps(5, 8)  # 25 × 25 maps
    packed = PackedMaps(pack_binary(torch.from_numpy(maps).bool(), 25, int(maps.sum((1, 2)).max())), 25)
    dense_model, dense_loss = train_autoencoder(maps, epochs=2, batch_size=16, seed=3, progress=False)
    packed_model, packed_loss = train_autoencoder(packed, epochs=2, batch_size=16, seed=3, progress=False)
    np.testing.assert_allclose(packed_loss, dense_loss, rtol=1e-6)
    np.testing.assert_allclose(encode(packed_model, packed), encode(dense_model, maps), rtol=1e-5, atol=1e-6)


def test_max_maps_trains_on_a_sample_and_encodes_all():
    maps, _ = _offset_maps(5, 20)  # 100 maps
    model, _ = train_autoencoder(maps, epochs=1, batch_size=16, max_maps=30, seed=0, progress=False)
    full, _ = train_autoencoder(maps, epochs=1, batch_size=16, seed=0, progress=False)
    assert encode(model, maps).shape == (100, 16)
    assert not np.allclose(encode(model, maps), encode(full, maps))  # trained on other data


def test_a_model_kept_as_plain_numbers_is_the_same_model():
    """The store keeps the autoencoder as one float32 vector (`to_flat`), not a pickle; `from_flat` gives it back."""
    torch.manual_seed(0)
    model = PatternAutoencoder(20, 4)
    flat = to_flat(model)
    assert flat.dtype == np.float32 and flat.shape == (parameter_count(20, 4),)
    maps = (torch.rand(5, 20, 20) < 0.05).to(torch.uint8)
    np.testing.assert_array_equal(encode(from_flat(20, 4, flat), maps), encode(model, maps))
    with pytest.raises(ValueError, match="weights given"):
        from_flat(20, 4, flat[:-1])
