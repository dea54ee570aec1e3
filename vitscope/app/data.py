"""What the views read from a store, loaded once per process and shared by all sessions."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from vitscope.errors import VitscopeError
from vitscope.store import open_store


class StoreData:
    """Small per-head arrays in memory (numpy); thumbnails read on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ds = ds = open_store(self.path)
        self.images, self.layers, self.heads = ds.sizes["image"], ds.sizes["layer"], ds.sizes["head"]
        self.grid = int(ds.attrs["patch_grid"])
        self.num_prefix = int(ds.attrs["num_prefix_tokens"])
        self.class_names: list[str] = [str(c) for c in ds["class_name"].values]
        self.image_ids: list[str] = [str(i) for i in ds["image_id"].values]
        load = ("label", "valid", "importance", "topk_idx", "topk_prob", "strength", "strength_entropy",
                "attention_distance", "pattern_label", "pattern_offset", "image_xy", "head_xy_cls", "head_xy_patch")
        for name in load:
            setattr(self, name, ds[name].values)
        self.metrics: list[str] = [str(m) for m in ds["metric"].values]
        self._thumbs: dict[int, np.ndarray] = {}

    def thumbnail(self, image: int) -> np.ndarray:
        """[h, w, 3] uint8; the last few are kept (several views draw the same image after each selection)."""
        if image not in self._thumbs:
            if len(self._thumbs) >= 8:
                self._thumbs.pop(next(iter(self._thumbs)))
            self._thumbs[image] = self.ds["thumbnail"][image].values
        return self._thumbs[image]

    def check_image(self, image: int) -> int:
        """`image` if it is in the store and was readable at build; else one line saying which it is not."""
        if not 0 <= image < self.images:
            raise VitscopeError(f"image {image} out of range: this store has images 0..{self.images - 1}")
        if not self.valid[image]:
            raise VitscopeError(f"image {image} ({self.image_ids[image]}) could not be read at build: pick another")
        return int(image)

    def head_index(self, layer: int, head: int) -> int:
        return layer * self.heads + head

    def metric_values(self, metric: str, mode: int) -> np.ndarray:
        """[N, L·H] values of one metric in one mode (rows of unreadable images are NaN)."""
        return self.importance[:, :, :, mode, self.metrics.index(metric)].reshape(self.images, -1)

    @cached_property
    def _trees(self) -> dict:
        trees = {}
        for kind in ("cls", "patch"):
            xy = getattr(self, f"head_xy_{kind}").reshape(-1, 2)  # [N·L·H, 2]
            ok = np.isfinite(xy).all(1)
            trees[kind] = (cKDTree(xy[ok]), np.flatnonzero(ok))
        return trees

    def nearest_head(self, kind: str, x: float, y: float) -> tuple[int, int, int]:
        """(image, layer, head) of the head point nearest to (x, y) in a head layout (KD-tree)."""
        tree, index = self._trees[kind]
        flat = int(index[tree.query([x, y])[1]])
        image, rest = divmod(flat, self.layers * self.heads)
        return image, *divmod(rest, self.heads)
