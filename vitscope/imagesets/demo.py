"""The embedded demo image set: scikit-learn's handwritten digits placed on cluttered canvases.

Each image is a digit (scaled 2.5–3.5×, bright ink) at a random position on a dark gradient
background with noise and mid-tone line and box clutter, so a model must find the digit: heads then
learn content-dependent attention, not only positional patterns. Everything is seeded per
image, so any image can be rebuilt alone. The digits are split once into a training pool
and a disjoint evaluation pool (the demo store's images).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from sklearn.datasets import load_digits

from vitscope.models.loading import DEMO_DATA_CFG

CANVAS = 64
EVAL_SIZE = 1000  # digits reserved for evaluation; the remaining 797 train the demo model
SPLIT_SEED = 20231
DIGIT_SIZE = (20, 29)  # side in pixels, [low, high)
LINES, BOXES = (3, 7), (1, 4)  # clutter counts, [low, high)
NOISE = 0.03
EVAL_SEED = 7


def _digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) indices into sklearn's 1797 digits; disjoint, fixed."""
    order = np.random.default_rng(SPLIT_SEED).permutation(1797)
    return np.sort(order[EVAL_SIZE:]), np.sort(order[:EVAL_SIZE])


def _colour(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, 3).astype(np.float32)


def compose(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 64×64 RGB uint8 canvas with `digit` (8×8 in [0,1]) placed in clutter.

    Background dark, clutter mid-tone, ink bright: the digit is findable by a small model
    trained in minutes, but only by looking at the right patches.
    """
    c0, c1 = _colour(rng, 0.0, 0.35), _colour(rng, 0.0, 0.35)
    t = np.linspace(0, 1, CANVAS, dtype=np.float32)
    ramp = t[:, None] if rng.random() < 0.5 else t[None, :]
    ramp = np.broadcast_to(ramp, (CANVAS, CANVAS))[..., None]
    bg = c0 * (1 - ramp) + c1 * ramp  # [64,64,3]
    canvas = Image.fromarray((bg * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)

    def mid_tone() -> tuple[int, int, int]:
        return tuple((_colour(rng, 0.15, 0.65) * 255).astype(int))

    for _ in range(int(rng.integers(*LINES))):  # line clutter
        x0, y0, x1, y1 = rng.integers(0, CANVAS, 4).tolist()
        draw.line((x0, y0, x1, y1), fill=mid_tone(), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(*BOXES))):  # box / blob clutter
        x0, y0 = rng.integers(0, CANVAS - 6, 2).tolist()
        w, h = rng.integers(3, 9, 2).tolist()
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape((x0, y0, x0 + w, y0 + h), fill=mid_tone())
    img = np.asarray(canvas, dtype=np.float32) / 255.0

    size = int(rng.integers(*DIGIT_SIZE))
    alpha = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR))
    alpha = alpha.astype(np.float32)[..., None] / 255.0
    y, x = rng.integers(0, CANVAS - size + 1, 2).tolist()
    ink = _colour(rng, 0.6, 1.0)
    img[y:y + size, x:x + size] = img[y:y + size, x:x + size] * (1 - alpha) + ink * alpha
    img += rng.normal(0, NOISE, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render(indices: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Compose the digits `indices` (each with its own RNG from (seed, i)) → (uint8 [N,64,64,3], labels)."""
    images, labels = _digits()
    out = np.empty((len(indices), CANVAS, CANVAS, 3), np.uint8)
    for n, i in enumerate(indices):
        out[n] = compose(images[i], np.random.default_rng([seed, int(i)]))
    return out, labels[indices]


def eval_set(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The demo evaluation images (1000, fixed) and their labels."""
    idx = split_indices()[1]
    return render(idx[:limit], EVAL_SEED)


def train_batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One fresh composition of every training digit (a new epoch's augmentation per seed)."""
    return render(split_indices()[0], 1000 + seed)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,h,w,3] → float [N,3,h,w] normalised as the demo model's data config says."""
    from vitscope.imagesets.folders import normalise

    return normalise(images, DEMO_DATA_CFG["mean"], DEMO_DATA_CFG["std"])


def image_set(limit: int | None = None):
    """The demo evaluation images as an ImageSet (in memory; ids `demo/0000`…)."""
    from vitscope.imagesets.folders import ImageSet
    from vitscope.models.loading import DEMO_CLASSES

    images, labels = eval_set(limit)
    return ImageSet(ids=[f"demo/{i:04d}" for i in range(len(images))], labels=labels.astype(np.int64),
                    class_names=list(DEMO_CLASSES), arrays=images, source="demo")
