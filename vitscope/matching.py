"""Head matching across two models (for `vitscope compare`): what each head does over the same images, how alike
two heads are, and the optimal one-to-one pairing.

- **Head similarity** (`head_similarity`): the mean of up to four similarities in [0, 1], each 1 for the same
  behaviour, over the matched images (`HeadFeatures`): three per-head statistics (attention distance, strength
  vector, pattern distribution) and the heads' CLS attention compared image by image. Identical heads get 1 up to
  float rounding. The strength and CLS terms need the same patch grid and are left out otherwise.
- **Head matching** (`match_heads`): one optimal assignment (`scipy.optimize.linear_sum_assignment`, total
  similarity maximised) over all heads of both models at once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy.optimize import linear_sum_assignment

from vitscope.vocab import OFFSETS, PATTERNS

COMPONENTS = ("distance", "strength", "patterns", "cls")  # the terms of the head similarity, equally weighted


@dataclass(frozen=True)
class HeadFeatures:
    """What a model's heads do over the matched images, for `head_similarity`: three per-head statistics, and
    each image's CLS attention vectors (compared image by image)."""

    distance: np.ndarray  # [L, H] mean attention distance, in units of uniform attention's on the grid
    strength: np.ndarray  # [L, H, hop] mean strength vector, normalised to sum 1 (negatives clamped to 0)
    patterns: np.ndarray  # [L, H, len(PATTERN_CLASSES)] share of the images with each pattern (diagonal by offset)
    cls: np.ndarray  # [image, L, H, 2N + 1] CLS attention vectors of the matched images (float32)
    grid: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.distance.shape  # type: ignore[return-value]


# The pattern classes of `HeadFeatures.patterns`: a diagonal head by its offset (a head that looks left is not one
# that looks at itself), then the other labels.
PATTERN_CLASSES = (*(f"diagonal {o}" for o in OFFSETS), *PATTERNS[1:])


def uniform_distance(grid: int) -> float:
    """Mean attention distance of uniform attention over a grid × grid patch grid (the scale of `distance`)."""
    r, c = np.divmod(np.arange(grid * grid), grid)
    return float(np.hypot(r[:, None] - r[None], c[:, None] - c[None]).mean())


def per_head(ds: xr.Dataset, name: str, images: np.ndarray, *rest: str) -> np.ndarray:
    """`name` of the chosen images as float64 [image, layer, head, *rest]."""
    return ds[name].isel(image=images).transpose("image", "layer", "head", *rest).values.astype(np.float64)


def label_names(ds: xr.Dataset, name: str, attr: str, names: tuple[str, ...]) -> list[str]:
    """The names a coded variable's integers stand for (its attribute, or vocab's where a store lacks it)."""
    return [str(n) for n in ds[name].attrs.get(attr, names)]


def pattern_classes(ds: xr.Dataset, images: np.ndarray) -> np.ndarray:
    """[image, L, H] index into PATTERN_CLASSES of each map (by the names in the variables' attributes)."""
    labels = ds["pattern_label"].isel(image=images).transpose("image", "layer", "head").values.astype(np.int64)
    offsets = ds["pattern_offset"].isel(image=images).transpose("image", "layer", "head").values.astype(np.int64)
    names = label_names(ds, "pattern_label", "patterns", PATTERNS)
    offset_names = label_names(ds, "pattern_offset", "offsets", OFFSETS)
    to_class = np.asarray([PATTERN_CLASSES.index(n) if n in PATTERN_CLASSES else PATTERN_CLASSES.index("none")
                           for n in names])
    out = to_class[labels.clip(0, len(names) - 1)]
    diagonal = labels == names.index("diagonal")
    offset_class = np.asarray([PATTERN_CLASSES.index(f"diagonal {o}") for o in offset_names])
    out[diagonal] = offset_class[offsets[diagonal].clip(0, len(offset_names) - 1)]
    return out


def head_features(ds: xr.Dataset, images: np.ndarray) -> HeadFeatures:
    """The per-head features of a store over the images at positions `images` (all valid)."""
    grid = int(ds.attrs["patch_grid"])
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a head without a number on any image: NaN, left out
        dist = np.nanmean(per_head(ds, "attention_distance", images), axis=0) / max(uniform_distance(grid), 1e-12)
        strength = np.clip(np.nanmean(per_head(ds, "strength", images, "hop"), axis=0), 0, None)
        total = strength.sum(-1, keepdims=True)
        strength = np.where(total > 0, strength / np.where(total > 0, total, 1), np.nan)
    classes = pattern_classes(ds, images)
    shares = np.stack([(classes == k).mean(0) for k in range(len(PATTERN_CLASSES))], axis=-1)
    cls = ds["cls_attention"].isel(image=images).transpose("image", "layer", "head", "cls_token").values
    return HeadFeatures(distance=dist, strength=strength, patterns=shares, cls=cls.astype(np.float32), grid=grid)


def _standardised(x: np.ndarray) -> np.ndarray:
    """Each vector (last axis) centred and scaled to unit length, in float64 (a constant one: NaN)."""
    x = x.astype(np.float64)
    x = x - x.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cls_correlation(ca: np.ndarray, cb: np.ndarray, chunk: int = 64) -> np.ndarray:
    """[heads A, heads B]: the mean over images of max(0, Pearson correlation) between a head of A's and a head of
    B's CLS attention vectors on the same image (`ca`, `cb`: [image, heads, 2N + 1]). Images where a head's
    vector is constant are left out of that head's mean."""
    n, ha, hb = ca.shape[0], ca.shape[1], cb.shape[1]
    total, count = np.zeros((ha, hb)), np.zeros((ha, hb))
    for start in range(0, n, chunk):
        za, zb = _standardised(ca[start:start + chunk]), _standardised(cb[start:start + chunk])
        r = za @ zb.transpose(0, 2, 1)  # [images, ha, hb]: correlations, image by image
        ok = np.isfinite(r)
        total += np.where(ok, np.clip(r, 0, 1), 0).sum(0)
        count += ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)


def head_similarity(fa: HeadFeatures, fb: HeadFeatures) -> dict[str, np.ndarray]:
    """Similarity of every head of A (rows, layer-major) to every head of B (columns): each term of COMPONENTS
    that both define, and `similarity`, their mean (a NaN term is left out of it), all in [0, 1]:

    - distance: 1 − |d_A − d_B|, clipped to [0, 1], of the mean attention distances in units of uniform
      attention's (a grid-free scale: a local head and a global one are about 1 apart);
    - strength: Σ_k min(q_A[k], q_B[k]) of the normalised mean strength vectors (histogram intersection);
    - patterns: Σ_c min(π_A[c], π_B[c]) of the shares of the images with each pattern, a diagonal one by offset;
    - cls: image by image, the correlation of the two heads' CLS attention vectors (where the class token looks
      and which patches look at it), negative counted as 0, averaged over the images.
    """
    ha, hb = fa.distance.size, fb.distance.size
    da, db = fa.distance.reshape(ha), fb.distance.reshape(hb)
    out = {"distance": np.clip(1 - np.abs(da[:, None] - db[None]), 0, 1)}
    if fa.grid == fb.grid:
        qa, qb = fa.strength.reshape(ha, -1), fb.strength.reshape(hb, -1)
        out["strength"] = _share(np.minimum(qa[:, None], qb[None]).sum(-1))
    pa, pb = fa.patterns.reshape(ha, -1), fb.patterns.reshape(hb, -1)
    out["patterns"] = _share(np.minimum(pa[:, None], pb[None]).sum(-1))
    if fa.grid == fb.grid:
        out["cls"] = cls_correlation(fa.cls.reshape(fa.cls.shape[0], ha, -1), fb.cls.reshape(fb.cls.shape[0], hb, -1))
    terms = np.stack([out[c] for c in COMPONENTS if c in out])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair whose every term is NaN: NaN, said as n/a
        out["similarity"] = np.clip(np.nanmean(terms, axis=0), 0, 1)
    return out


def _share(overlap: np.ndarray) -> np.ndarray:
    """A histogram intersection of two normalised vectors, in [0, 1]: their sums' rounding can exceed 1 by an ulp."""
    return np.clip(overlap, 0, 1)


def match_heads(similarity: np.ndarray) -> list[tuple[int, int]]:
    """The one-to-one pairing of rows (heads of A) and columns (heads of B) with the largest total similarity
    (NaN counts as 0); min(rows, columns) pairs, in row order."""
    rows, cols = linear_sum_assignment(np.nan_to_num(similarity, nan=0.0), maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
