"""A new image, not in the store: the build's full per-image analysis, placed into the store's layouts.

A store records each layout's fit sample (`<layout>_fit`, attribute `layout_fits`): the fitted layout is rebuilt
from it (`layout.Reference`, once per process and layout) and places the new image's features with its
`transform`, as the build placed every point outside the sample; the patch layout's features are the latents of
the store's own autoencoder (`ae_weights`). Stores built before the record (or the weights) cannot rebuild the
fit: there a new point goes where its nearest stored neighbours are, the mean position of the k
nearest images (by the whole-head importance vector) and, per head, of the k nearest maps of the same head
(CLS-attention vectors by distance, binarised maps by overlap of their 1s). Nothing is written.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from PIL import Image

from vitscope import store
from vitscope.analysis import autoencoder, layout, probe
from vitscope.config import BuildConfig
from vitscope.errors import VitscopeError
from vitscope.imagesets.folders import BadImage, Preprocessor, read_rgb
from vitscope.layouts import features
from vitscope.models import ViTAdapter
from vitscope.per_image import analyse_batch
from vitscope.vocab import DEFAULT_METRIC, METRICS, WHOLE_HEAD

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


def analyse(adapter: ViTAdapter, ds: xr.Dataset, lay: store.Shape, image: Image.Image, name: str,
            label: int | None = None) -> dict:
    """The per-image store variables of one new image (no image dimension), its prediction and layout places,
    for the store `ds` (sizes `lay`) and the model it was built with."""
    class_names = [str(c) for c in ds["class_name"].values]
    x, thumb = Preprocessor(adapter.model)(image)
    with torch.inference_mode():
        probs = adapter.logits(x[None]).float().softmax(-1)[0].cpu()
    predicted = int(probs.argmax())
    if label is not None and not 0 <= int(label) < len(class_names):
        raise VitscopeError(f"label {label} out of range: 0..{len(class_names) - 1}")
    true = predicted if label is None else int(label)
    params = json.loads(ds.attrs["fingerprint"])  # the analysis the store's images had
    got = analyse_batch(adapter, x[None], torch.tensor([true]), lay, params["top"],
                        params.get("precision", BuildConfig.precision))
    got.update(label=np.array([true]), valid=np.array([True]), thumbnail=np.asarray(thumb, np.uint8)[None])
    arrays = {k: got[k][0] for k in store.PER_CHUNK if k in got}
    top = probs.topk(min(5, len(probs)))
    return {
        "kind": "new_image", "name": name, "label": true, "label_name": class_names[true],
        "label_from": "prediction" if label is None else "given", "predicted": predicted,
        "top5": [[class_names[c], float(p)] for c, p in zip(top.indices.tolist(), top.values, strict=True)],
        # the metric the build laid the images out by (a backbone store without classes: a feature metric)
        "arrays": arrays, **place(ds, lay, arrays, probe.layout_metric(ds.attrs, params.get("layout_metric",
                                                                                           DEFAULT_METRIC))),
    }


# Fitted layouts (and autoencoders) rebuilt for new images, per process: (store fingerprint, layout, record) → it.
_REFERENCES: dict[tuple, object] = {}
_LOCK = threading.Lock()  # two sessions' uploads rebuild one reference once


def reference(ds: xr.Dataset, name: str, layout_metric: str) -> layout.Reference | None:
    """The fitted layout `name` of a store, rebuilt from its fit sample; None for a store without the record
    (built before it) or a layout not yet written."""
    record = ds.attrs.get("layout_fits", {}).get(name)
    if record is None or f"{name}_fit" not in ds:
        return None
    key = (ds.attrs.get("fingerprint"), name, json.dumps(record, sort_keys=True))
    with _LOCK:
        if key not in _REFERENCES:
            valid = ds["valid"].values.astype(bool)
            fitted = ds[f"{name}_fit"].values[valid].reshape(-1)  # over the layout's points, in `features` order
            xy = ds[name].values[valid].reshape(-1, 2)[fitted]
            if len(_REFERENCES) >= 8:  # a served store has three and its autoencoder; keep memory bounded
                _REFERENCES.clear()
            _REFERENCES[key] = layout.Reference(features(ds, name, layout_metric)[fitted], xy, record, n_jobs=-1)
        return _REFERENCES[key]


def _autoencoder(ds: xr.Dataset, lay: store.Shape) -> autoencoder.PatternAutoencoder:
    """The store's pattern autoencoder, from its weights (`ae_weights`), once per process and store."""
    key = ("autoencoder", ds.attrs.get("fingerprint"), json.dumps(ds.attrs.get("ae_loss")))
    with _LOCK:
        if key not in _REFERENCES:
            _REFERENCES[key] = autoencoder.from_flat(lay.binary_size, lay.latent, ds["ae_weights"].values)
        return _REFERENCES[key]


def place(ds: xr.Dataset, lay: store.Shape, arrays: dict[str, np.ndarray], layout_metric: str) -> dict:
    """image_xy [2], head_xy_cls and head_xy_patch [L, H, 2] of a new image, and `placed_by` (each layout:
    "transform", the fitted layout's, or "neighbours", the mean of the nearest stored points)."""
    valid = ds["valid"].values.astype(bool)
    out: dict[str, object] = {}
    by = {name: "neighbours" for name in ("image_xy", "head_xy_cls", "head_xy_patch")}
    if "image_xy" not in ds or not valid.any():
        return {"image_xy": None, "head_xy_cls": None, "head_xy_patch": None, "placed_by": by}
    L, H = lay.layers, lay.heads
    mine = arrays["importance"][:, :, WHOLE_HEAD, METRICS.index(layout_metric)]  # [L, H]: modes are positions
    ref = reference(ds, "image_xy", layout_metric)
    if ref is not None:
        out["image_xy"], by["image_xy"] = ref.place(mine.reshape(1, -1))[0].tolist(), "transform"
    else:
        feats = ds["importance"].sel(mode=WHOLE_HEAD, metric=layout_metric).values[valid].reshape(int(valid.sum()),
                                                                                                   -1)
        near = _nearest(((feats - mine.reshape(1, -1)) ** 2).sum(-1))
        out["image_xy"] = np.nanmean(ds["image_xy"].values[valid][near], 0).tolist()

    cls_mine = arrays["cls_attention"].astype(np.float32)  # [L, H, T]
    ref = reference(ds, "head_xy_cls", layout_metric)
    if ref is not None:
        out["head_xy_cls"] = ref.place(cls_mine.reshape(L * H, -1)).reshape(L, H, 2).tolist()
        by["head_xy_cls"] = "transform"
    else:
        cls_vec = ds["cls_attention"].values[valid].astype(np.float32)  # [N, L, H, T]
        d = ((cls_vec - cls_mine[None]) ** 2).sum(-1)  # [N, L, H]
        out["head_xy_cls"] = _per_head(d, ds["head_xy_cls"].values[valid])

    ref = reference(ds, "head_xy_patch", layout_metric) if "ae_weights" in ds else None
    if ref is not None:  # the maps' latents by the store's own autoencoder, then its layout's transform
        model = _autoencoder(ds, lay)
        maps = autoencoder.PackedMaps(arrays["binary_index"].reshape(L * H, -1), lay.binary_size)
        out["head_xy_patch"] = ref.place(autoencoder.encode(model, maps)).reshape(L, H, 2).tolist()
        by["head_xy_patch"] = "transform"
    else:
        index = ds["binary_index"].values[valid]  # [N, L, H, ones] sorted flat indices of the 1s
        size = lay.binary_size
        maps = np.zeros((L, H, size * size), bool)
        maps[np.arange(L)[:, None, None], np.arange(H)[None, :, None], arrays["binary_index"]] = True
        overlap = maps[np.arange(L)[None, :, None, None], np.arange(H)[None, None, :, None], index].sum(-1)  # [N, L, H]
        out["head_xy_patch"] = _per_head(-overlap.astype(np.float64), ds["head_xy_patch"].values[valid])
    # a layout still being computed (a store served before its layouts) has no places yet
    return {**{k: v if np.isfinite(v).all() else None for k, v in out.items()}, "placed_by": by}


def _nearest(dist: np.ndarray) -> np.ndarray:
    k = min(NEIGHBOURS, len(dist))
    return np.argpartition(dist, k - 1)[:k]


def _per_head(dist: np.ndarray, xy: np.ndarray) -> list:
    """dist [N, L, H] (smaller = nearer), xy [N, L, H, 2] → the mean xy of each head's nearest maps [L, H, 2]."""
    k = min(NEIGHBOURS, dist.shape[0])
    near = np.argpartition(dist, k - 1, axis=0)[:k]  # [k, L, H]
    return np.nanmean(np.take_along_axis(xy, near[..., None], axis=0), 0).tolist()
