"""A new image, not in the store: the build's full per-image analysis, placed into the store's layouts.

The layouts are tSNE embeddings without a fitted transform kept in the store, so a new point goes
where its nearest stored neighbours are: the mean position of the k nearest images (by the layout's
own feature, the whole-head importance vector) and, per head, of the k nearest maps of the same
head (CLS-attention vectors by distance, binarised maps by overlap of their 1s). Nothing is written.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from vitscope import store
from vitscope.data.images import BadImage, ImageSet, Preprocessor, read_rgb
from vitscope.errors import VitscopeError
from vitscope.vocab import METRICS

if TYPE_CHECKING:
    from vitscope.service.core import Service

MAX_BYTES = 50 * 1024 * 1024
NEIGHBOURS = 5


def read_upload(path: str | Path | None = None, data: bytes | None = None, name: str = "upload") -> Image.Image:
    """An uploaded image file or bytes as RGB; one line for a missing, too large or unreadable file."""
    if data is None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise VitscopeError(f"no image file at {path}")
        size, name = path.stat().st_size, str(path)
    else:
        size = len(data)
    if size > MAX_BYTES:
        raise VitscopeError(f"{name} is {size / 2**20:.0f} MB: images over {MAX_BYTES // 2**20} MB are refused")
    try:
        return read_rgb(path if data is None else io.BytesIO(data))
    except BadImage as e:
        raise VitscopeError(f"cannot use {name} as an image: {e}") from None


def analyse(svc: Service, path: str | Path | None = None, data: bytes | None = None,
            label: int | None = None, name: str | None = None) -> dict:
    """The per-image store variables of one new image (no image dimension), its prediction and layout places."""
    ad = svc.adapter
    name = name or (Path(path).name if path is not None else "upload")
    image = read_upload(path, data, name)
    pre = Preprocessor(ad.model)
    x, _ = pre(image)
    with torch.inference_mode():
        probs = ad.model(x[None].to(ad.device, ad.dtype)).float().softmax(-1)[0].cpu()
    predicted = int(probs.argmax())
    if label is not None and not 0 <= int(label) < len(svc.class_names):
        raise VitscopeError(f"label {label} out of range: 0..{len(svc.class_names) - 1}")
    true = predicted if label is None else int(label)

    from vitscope.build import compute_chunk  # the build's own per-image analysis, for one image

    lay = replace(store.read_layout(svc.path), images=1, chunk=1)
    params = json.loads(svc.ds.attrs["fingerprint"])
    cfg = SimpleNamespace(top=params["top"], batch_size=1, precision=params.get("precision", "float32"))
    one = ImageSet(ids=[name], labels=np.array([true]), class_names=svc.class_names,
                   arrays=np.asarray(image, np.uint8)[None])
    arrays, skipped = compute_chunk(ad, one, pre, lay, cfg, 0)
    if skipped:
        raise VitscopeError(skipped[0])
    arrays = {k: v[0] for k, v in arrays.items()}
    top = probs.topk(min(5, len(probs)))
    return {
        "kind": "new_image", "name": name, "label": true, "label_name": svc.class_names[true],
        "label_from": "prediction" if label is None else "given", "predicted": predicted,
        "top5": [[svc.class_names[c], float(p)] for c, p in zip(top.indices.tolist(), top.values, strict=True)],
        "arrays": arrays, **place(svc, arrays, params.get("layout_metric", "prob")),
    }


def place(svc: Service, arrays: dict[str, np.ndarray], layout_metric: str) -> dict:
    """image_xy [2], head_xy_cls and head_xy_patch [L, H, 2] of a new image, from its nearest stored neighbours."""
    ds, valid = svc.ds, svc.valid
    out: dict[str, object] = {}
    if "image_xy" not in ds or not valid.any():
        return {"image_xy": None, "head_xy_cls": None, "head_xy_patch": None}
    m = METRICS.index(layout_metric)
    feats = ds["importance"].values[valid][:, :, :, 1, m].reshape(int(valid.sum()), -1)
    near = _nearest(((feats - arrays["importance"][:, :, 1, m].reshape(1, -1)) ** 2).sum(-1))
    out["image_xy"] = np.nanmean(ds["image_xy"].values[valid][near], 0).tolist()

    cls_vec = ds["cls_attention"].values[valid].astype(np.float32)  # [N, L, H, T]
    d = ((cls_vec - arrays["cls_attention"].astype(np.float32)[None]) ** 2).sum(-1)  # [N, L, H]
    out["head_xy_cls"] = _per_head(d, ds["head_xy_cls"].values[valid])

    index = ds["binary_index"].values[valid]  # [N, L, H, ones] sorted flat indices of the 1s
    size = store.read_layout(svc.path).binary_size
    mine = np.zeros((*index.shape[1:3], size * size), bool)
    L, H = index.shape[1:3]
    mine[np.arange(L)[:, None, None], np.arange(H)[None, :, None], arrays["binary_index"]] = True
    overlap = mine[np.arange(L)[None, :, None, None], np.arange(H)[None, None, :, None], index].sum(-1)  # [N, L, H]
    out["head_xy_patch"] = _per_head(-overlap.astype(np.float64), ds["head_xy_patch"].values[valid])
    # a layout still being computed (a store served before its layouts) has no places yet
    return {k: v if np.isfinite(v).all() else None for k, v in out.items()}


def _nearest(dist: np.ndarray) -> np.ndarray:
    k = min(NEIGHBOURS, len(dist))
    return np.argpartition(dist, k - 1)[:k]


def _per_head(dist: np.ndarray, xy: np.ndarray) -> list:
    """dist [N, L, H] (smaller = nearer), xy [N, L, H, 2] → the mean xy of each head's nearest maps [L, H, 2]."""
    k = min(NEIGHBOURS, dist.shape[0])
    near = np.argpartition(dist, k - 1, axis=0)[:k]  # [k, L, H]
    return np.nanmean(np.take_along_axis(xy, near[..., None], axis=0), 0).tolist()
