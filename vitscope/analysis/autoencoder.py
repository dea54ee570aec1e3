"""Pattern autoencoder of binarised patch-attention maps (paper Sec. 5.4.1).

tSNE on raw patch attention (p² × p² values) does not cluster patterns, so the paper trains a small
convolutional autoencoder on the binarised maps and lays out its bottleneck instead. It trains at the maps'
full resolution up to 256 × 256 (ViT-B/16 at 224 has 196 × 196): pooling merges neighbouring diagonals,
so a "left" head would look like a "self" head. Maps come dense, or as the store keeps them (`PackedMaps`:
the indices of their 1s), unpacked one batch at a time so that a large set fits in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitscope.analysis.binary import unpack_binary

__all__ = ["PackedMaps", "PatternAutoencoder", "encode", "from_flat", "parameter_count", "to_flat",
           "train_autoencoder"]

_MAX_POS_WEIGHT = 100.0  # caps the positive-class weight for (almost) empty maps


class PatternAutoencoder(nn.Module):
    """Conv autoencoder of [S, S] binary maps: 2 strided convs + FC encoder, symmetric decoder.

    The first conv has stride 2, or ceil(S / 64) for maps over 128 (a kernel of stride + 1 or 2, so each
    window still sees where a 1 sits in it: one-cell offsets stay apart): a ViT-B's 196 × 196 maps then cost
    a third of a stride-2 network. Any S works: the transposed convs use an output_padding that restores the
    exact encoder sizes. `forward` returns logits (train with BCEWithLogits); `encode` returns the bottleneck.
    """

    def __init__(self, size: int, latent: int = 16, channels: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        if size < 1 or latent < 1:
            raise ValueError(f"PatternAutoencoder: size and latent must be >= 1, got size={size}, latent={latent}")
        self.size, self.latent = size, latent
        c1, c2 = channels
        st = max(2, -(-size // 64))  # first stride
        k1 = st + 1 + st % 2  # odd kernel ≥ stride + 1
        s1 = (size - 1) // st + 1  # size after conv 1 (padding k1 // 2)
        s2 = (s1 + 1) // 2  # size after conv 2 (k=3, stride 2, pad 1)
        self._hidden = (c2, s2, s2)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, k1, stride=st, padding=k1 // 2),  # [B, c1, s1, s1]
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),  # [B, c2, s2, s2]
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * s2 * s2, latent),  # [B, latent]
        )
        self.decoder_fc = nn.Sequential(nn.Linear(latent, c2 * s2 * s2), nn.ReLU())
        # ConvTranspose(k, s, p = k // 2, odd k) maps n to (n - 1)·s + 1 + output_padding: land exactly on s1 / size.
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=s1 - 2 * s2 + 1),  # [B, c1, s1, s1]
            nn.ReLU(),
            nn.ConvTranspose2d(c1, 1, k1, stride=st, padding=k1 // 2,
                               output_padding=(size - 1) % st),  # [B, 1, S, S]
        )

    def encode(self, x: Tensor) -> Tensor:
        """[B, 1, S, S] or [B, S, S] maps → [B, latent] bottleneck."""
        if x.ndim == 3:
            x = x.unsqueeze(1)
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """[B, latent] → [B, 1, S, S] reconstruction logits."""
        return self.decoder(self.decoder_fc(z).view(-1, *self._hidden))

    def forward(self, x: Tensor) -> Tensor:
        """[B, 1, S, S] maps → [B, 1, S, S] reconstruction logits."""
        return self.decode(self.encode(x))


@dataclass(frozen=True)
class PackedMaps:
    """[M] binary S × S maps as uint16 indices of their 1s, [M, ones] (`vitscope.analysis.binary.pack_binary`)."""

    index: np.ndarray
    size: int

    def __len__(self) -> int:
        return len(self.index)


Maps = Tensor | PackedMaps  # dense [M, S, S] (uint8 or float32), or packed


def _as_maps(maps: np.ndarray | Tensor | PackedMaps) -> Maps:
    """Validate [M, S, S] 0/1 maps; keep them compact (uint8, or packed) so large sets fit, convert per batch."""
    if isinstance(maps, PackedMaps):
        if maps.index.ndim != 2 or len(maps) == 0:
            raise ValueError(f"expected packed maps of shape [M, ones] with M ≥ 1, got {maps.index.shape}")
        return maps
    t = torch.as_tensor(maps)
    if t.ndim != 3 or t.shape[1] != t.shape[2]:
        raise ValueError(f"expected binary maps of shape [M, S, S], got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError("expected at least one map, got an empty array")
    if t.dtype == torch.bool or t.dtype == torch.uint8:
        return t.to(torch.uint8)
    return t.to(torch.float32)


def _size(data: Maps) -> int:
    return data.size if isinstance(data, PackedMaps) else data.shape[-1]


def _batch(data: Maps, idx: Tensor | slice, device: str | torch.device) -> Tensor:
    """Maps `idx` as float32 [B, 1, S, S] on `device`."""
    if isinstance(data, PackedMaps):
        dense = unpack_binary(data.index[idx], data.size)  # [B, S, S] bool
    else:
        dense = data[idx]
    return dense.to(device=device, dtype=torch.float32).unsqueeze(1)


def _ones(data: Maps) -> float:
    """Number of 1s in all maps (a packed map's repeated padding index counts once)."""
    if isinstance(data, PackedMaps):
        sorted_ = np.sort(data.index, axis=-1)
        return float(len(data) + (np.diff(sorted_, axis=-1) != 0).sum())
    return float(data.sum(dtype=torch.float64))


def train_autoencoder(
    maps: np.ndarray | Tensor | PackedMaps,
    *,
    latent: int = 16,
    epochs: int = 10,
    max_maps: int | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[PatternAutoencoder, list[float]]:
    """Train a PatternAutoencoder on [M, S, S] 0/1 maps; return it (eval mode) and the loss per epoch.

    `max_maps` trains on a seeded sample of that many maps (every map is still encoded): the maps of a
    store repeat a few patterns many times, so a sample learns them at a fraction of the cost.
    Seeded through a private RNG (global torch RNG untouched): identical inputs give identical models
    on CPU. The loss per epoch is the mean positive-weighted BCE per pixel that is being minimised.
    """
    data = _as_maps(maps)  # [M, S, S] or packed
    size = _size(data)
    gen = torch.Generator().manual_seed(seed)
    pool = torch.arange(len(data))
    if max_maps is not None and len(data) > max_maps:
        pool = torch.randperm(len(data), generator=gen)[:max_maps].sort().values
    m = len(pool)
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = PatternAutoencoder(size, latent).to(device)

    # Binarised top-1 % maps are ~99 % zeros: unweighted BCE is minimised by predicting all zeros, which
    # makes every latent the same. Weighting the ones by the zero/one ratio balances the two classes so the
    # network must place the ones, i.e. learn the pattern (capped for maps that are nearly empty).
    ones = _ones(data)
    zeros = len(data) * size * size - ones
    pos_weight = min(max(zeros / ones, 1.0), _MAX_POS_WEIGHT) if ones > 0 else 1.0
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    n_batches = math.ceil(m / batch_size)
    losses: list[float] = []
    model.train()
    # counted in maps, so the bar shows maps/s and an ETA like the build's other stages
    with tqdm(total=epochs * m, desc="pattern autoencoder", unit="map", unit_scale=True,
              disable=not progress) as bar:
        for epoch in range(epochs):
            order = pool[torch.randperm(m, generator=gen)]
            total = 0.0
            for b in range(n_batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                x = _batch(data, idx.numpy() if isinstance(data, PackedMaps) else idx, device)  # [B, 1, S, S]
                loss = loss_fn(model(x), x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                bar.update(len(idx))
            losses.append(total / m)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
    return model.eval(), losses


@torch.no_grad()
def encode(
    model: PatternAutoencoder, maps: np.ndarray | Tensor | PackedMaps, batch_size: int = 1024,
    device: str | torch.device = "cpu", progress: bool = False,
) -> np.ndarray:
    """Bottleneck codes of [M, S, S] maps → float32 [M, latent], in batches (inputs can be large; a ViT-B's
    144k maps of 196 × 196 take a while, hence the optional progress bar)."""
    data = _as_maps(maps)  # [M, S, S] or packed
    size = _size(data)
    if size != model.size:
        raise ValueError(
            f"maps are {size}×{size} but the autoencoder was built for {model.size}×{model.size}; "
            "downsample them with binary.downsample_binary(maps, size) first"
        )
    was_training = model.training
    model.eval().to(device)
    out = np.empty((len(data), model.latent), dtype=np.float32)  # [M, latent]
    with tqdm(total=len(data), desc="encoding maps", unit="map", unit_scale=True, disable=not progress) as bar:
        for start in range(0, len(data), batch_size):
            x = _batch(data, slice(start, start + batch_size), device)  # [B, 1, S, S]
            out[start : start + x.shape[0]] = model.encode(x).float().cpu().numpy()
            bar.update(x.shape[0])
    model.train(was_training)
    return out


# A trained autoencoder kept in a store as plain numbers (never a pickle: stores are shared), in `state_dict` order.

def parameter_count(size: int, latent: int) -> int:
    """Numbers in a PatternAutoencoder(size, latent)'s weights: the length of `to_flat`."""
    return sum(p.numel() for p in PatternAutoencoder(size, latent).state_dict().values())


def to_flat(model: PatternAutoencoder) -> np.ndarray:
    """All of a model's weights as one float32 vector [parameter_count]."""
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in model.state_dict().values()]).numpy()


def from_flat(size: int, latent: int, flat: np.ndarray) -> PatternAutoencoder:
    """The PatternAutoencoder(size, latent) whose weights are `to_flat`'s vector (eval mode)."""
    model = PatternAutoencoder(size, latent)
    state, at = model.state_dict(), 0
    if len(flat) != parameter_count(size, latent):
        raise ValueError(f"{len(flat)} weights given, a PatternAutoencoder({size}, {latent}) has "
                         f"{parameter_count(size, latent)}")
    for name, p in state.items():
        state[name] = torch.from_numpy(np.asarray(flat[at:at + p.numel()], np.float32).reshape(p.shape).copy())
        at += p.numel()
    model.load_state_dict(state)
    return model.eval()
