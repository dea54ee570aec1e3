"""The one place that knows the on-disk schema: an xarray Dataset in a zarr store (docs/architecture.md).

A store is created up front with every array at full size (metadata only), then filled in
image chunks by region writes; `chunk_done` records finished chunks so a killed build resumes,
and concurrent workers never write the same zarr chunk.
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from zarr.storage import LocalStore

from vitscope import __version__
from vitscope.errors import StoreMismatch, VitscopeError, writes
from vitscope.vocab import (
    BASE_PATTERNS,
    HEAD_EFFECTS,
    HEAD_KINDS,
    LINEAR_PROBE,
    METRICS,
    MODES,
    NO_BASIS,
    OFFSETS,
    PATTERNS,
    SINK_RANKS,
    STORED_MAPS,
    prefix_names,
)

SCHEMA_VERSION = 5  # v3: sinks, high-norm tokens, prefix shares, the head kind `sink`; v4: input maps; v5: effects
# Stores this vitscope opens: each lacks what later schemas added (the app and `info` say so); a build never resumes
# one (its fingerprint names its schema).
READABLE_SCHEMAS = (2, 3, 4, 5)
SINK_VARIABLES = ("sink_token", "sink_share", "prefix_share", "norm_token", "norm_ratio", "sink_tokens",
                  "sink_frequency", "norm_tokens", "norm_frequency", "head_sink_share", "head_sink_tokens")
FORMAT = dict(zarr_format=2)  # v2 metadata: readable by every zarr/xarray, no spec warnings


@dataclass(frozen=True)
class Shape:
    """Sizes of one store: images N, layers L, heads H, classes C, patch grid p, tokens P, … (kept in the store's
    attribute `layout`)."""

    images: int
    layers: int
    heads: int
    classes: int
    grid: int
    tokens: int
    topk: int
    latent: int
    binary_size: int  # side S of the binarised maps kept (N = p², max-pooled to S when N > S)
    binary_ones: int  # indices kept per map: the 1s of a top-`top` map, ceil(top·N²)
    thumb: tuple[int, int]
    chunk: int
    store_attention: bool = False
    registers: int = 0  # prefix tokens that are registers (the last ones; `vocab.prefix_names`)
    features: int = 0  # size of the feature a backbone's linear probe reads (0: no probe stored)
    # the layouts' fit samples are recorded (`<layout>_fit`, attribute `layout_fits`): a new image is placed by the
    # fitted layout's transform. False in stores built before (they place new images by nearest neighbours)
    fits: bool = False
    ae_params: int = 0  # numbers in the pattern autoencoder's weights, kept as `ae_weights` (0: not kept)

    @property
    def prefix(self) -> int:
        return self.tokens - self.grid**2

    @property
    def chunks(self) -> int:
        return -(-self.images // self.chunk)

    def variables(self) -> dict[str, tuple[tuple[str, ...], str]]:
        """name → (dims, dtype) of every data variable."""
        v = {
            "label": (("image",), "int64"),
            "valid": (("image",), "bool"),
            "baseline_prob": (("image",), "float32"),
            "topk_idx": (("image", "layer", "head", "mode", "k"), "int32"),
            "topk_prob": (("image", "layer", "head", "mode", "k"), "float32"),
            "importance": (("image", "layer", "head", "mode", "metric"), "float32"),
            "grad_importance": (("image", "layer", "head"), "float32"),
            "strength": (("image", "layer", "head", "hop"), "float32"),
            "strength_entropy": (("image", "layer", "head"), "float32"),
            "attention_distance": (("image", "layer", "head"), "float32"),
            "cls_attention": (("image", "layer", "head", "cls_token"), "float16"),
            "pattern_score": (("image", "layer", "head", "pattern"), "float32"),
            "pattern_label": (("image", "layer", "head"), "int8"),
            "pattern_second": (("image", "layer", "head"), "int8"),
            "pattern_offset": (("image", "layer", "head"), "int8"),
            "binary_index": (("image", "layer", "head", "one"), "uint16"),
            "thumbnail": (("image", "y", "x", "rgb"), "uint8"),
            "pattern_latent": (("image", "layer", "head", "latent"), "float32"),
            "image_xy": (("image", "xy"), "float32"),
            "head_xy_cls": (("image", "layer", "head", "xy"), "float32"),
            "head_xy_patch": (("image", "layer", "head", "xy"), "float32"),
            "head_consistency": (("layer", "head"), "float32"),
            "head_kind": (("layer", "head"), "int8"),
            "sink_token": (("image", "layer", "rank"), "int16"),
            "sink_share": (("image", "layer", "rank"), "float16"),
            "prefix_share": (("image", "layer", "prefix"), "float16"),
            "norm_token": (("image", "layer", "rank"), "int16"),
            "norm_ratio": (("image", "layer", "rank"), "float16"),
            "sink_tokens": (("layer", "rank"), "int16"),
            "sink_frequency": (("layer", "rank"), "float32"),
            "norm_tokens": (("layer", "rank"), "int16"),
            "norm_frequency": (("layer", "rank"), "float32"),
            "head_sink_share": (("layer", "head"), "float32"),
            "head_sink_tokens": (("layer", "head", "rank"), "int16"),
            "input_map": (("image", "input_method", "patch"), "float32"),
            **{name: (("image", "layer", "head"), "float32") for name in HEAD_EFFECTS},
        }
        if self.fits:
            v["image_xy_fit"] = (("image",), "bool")
            v["head_xy_cls_fit"] = (("image", "layer", "head"), "bool")
            v["head_xy_patch_fit"] = (("image", "layer", "head"), "bool")
        if self.ae_params:
            v["ae_weights"] = (("ae_param",), "float32")
        if self.store_attention:
            v["attention"] = (("image", "layer", "head", "query", "key"), "float16")
        if self.features:
            v["probe_coef"] = (("class", "feature"), "float32")
            v["probe_bias"] = (("class",), "float32")
        return v

    def sizes(self) -> dict[str, int]:
        return dict(image=self.images, layer=self.layers, head=self.heads, mode=len(MODES), metric=len(METRICS),
                    k=self.topk, hop=self.grid, cls_token=2 * self.grid**2 + 1, pattern=len(BASE_PATTERNS),
                    one=self.binary_ones,
                    y=self.thumb[0], x=self.thumb[1], rgb=3, latent=self.latent, xy=2, query=self.tokens,
                    key=self.tokens, rank=min(SINK_RANKS, self.grid**2), prefix=self.prefix,
                    feature=self.features, ae_param=self.ae_params, input_method=len(STORED_MAPS),
                    patch=self.grid**2, **{"class": self.classes})


PER_CHUNK = ("label", "valid", "baseline_prob", "topk_idx", "topk_prob", "importance", "grad_importance",
             "strength", "strength_entropy", "attention_distance", "cls_attention", "pattern_score",
             "pattern_label", "pattern_second", "pattern_offset", "binary_index", "thumbnail", "attention",
             "sink_token", "sink_share", "prefix_share", "norm_token", "norm_ratio", "input_map", *HEAD_EFFECTS)
GLOBAL = ("pattern_latent", "image_xy", "head_xy_cls", "head_xy_patch", "image_xy_fit", "head_xy_cls_fit",
          "head_xy_patch_fit", "ae_weights", "head_consistency", "head_kind",
          "sink_tokens", "sink_frequency", "norm_tokens", "norm_frequency", "head_sink_share", "head_sink_tokens")
# What integer codes mean, kept with the variables so that a store reads without vitscope.
CODES = {"pattern_label": ("patterns", PATTERNS), "pattern_second": ("patterns", PATTERNS),
         "pattern_offset": ("offsets", OFFSETS), "head_kind": ("kinds", HEAD_KINDS)}

# A store write that fails for a reason the user can fix is one line; a rerun resumes from the chunks marked done.
KEPT = ": finished chunks are kept"
ELSEWHERE = "build it where you can write (--out; $VITSCOPE_CACHE for `vitscope demo`)"
_writes = writes(kept=KEPT, elsewhere=ELSEWHERE)  # a store write: its fixable failure is one line


def _whole_or_none(fn):
    """A write that makes a store what a resumed build expects (its metadata, then what precedes the first chunk):
    if it fails, the half-made store goes, so that the same command starts it afresh (it held no finished work)."""
    @functools.wraps(fn)
    def write(path, *args, **kwargs):
        try:
            return fn(path, *args, **kwargs)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
    return write


def fill_value(dtype: str):
    """What a not-yet-computed (or unreadable image's) entry holds: NaN, False, -1, or 0 for uint8."""
    kind = np.dtype(dtype).kind
    return {"f": np.nan, "b": False, "i": -1}.get(kind, 0)


@_writes
@_whole_or_none
def create(path: Path, shape: Shape, fingerprint: dict, ids: list[str], class_names: list[str],
           attrs: dict) -> None:
    """Write the store's metadata at full size (no data yet): every chunk can then be written alone."""
    import dask.array as da

    sizes = shape.sizes()
    data = {}
    for name, (dims, dtype) in shape.variables().items():
        size = tuple(sizes[d] for d in dims)
        chunks = tuple(shape.chunk if d == "image" else sizes[d] for d in dims)
        data[name] = xr.DataArray(da.full(size, fill_value(dtype), dtype=dtype, chunks=chunks), dims=dims)
        if name in CODES:
            key, names = CODES[name]
            data[name].attrs[key] = list(names)
    coords = {
        "image_id": ("image", np.asarray(ids, dtype=str)),
        "class_name": ("class", np.asarray(class_names, dtype=str)),
        "mode": np.asarray(MODES), "metric": list(METRICS),
        "pattern": list(BASE_PATTERNS), "offset": list(OFFSETS),
        "xy": ["x", "y"],
        "prefix": prefix_names(shape.prefix, shape.registers),
        "input_method": list(STORED_MAPS),
    }
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(attrs, vitscope_schema=SCHEMA_VERSION, vitscope_version=__version__,
                    fingerprint=json.dumps(fingerprint, sort_keys=True), complete=False,
                    chunk_size=shape.chunk, layout=json.dumps(shape.__dict__))
    ds.to_zarr(path, mode="w", compute=False, **FORMAT)
    # progress markers: one zarr chunk per build chunk, so concurrent writers never collide
    done = zarr.create_array(store=str(path / "chunk_done"), shape=(shape.chunks,), chunks=(1,), dtype="bool",
                             fill_value=False, zarr_format=2)
    done.attrs["_ARRAY_DIMENSIONS"] = ["chunk"]  # an ordinary variable to xarray


def read_shape(path: Path) -> Shape:
    raw = json.loads(zarr.open_group(str(path), mode="r").attrs["layout"])
    raw["thumb"] = tuple(raw["thumb"])
    return Shape(**raw)  # a v2 store's record has no `registers`: the default


def has_sinks(ds: xr.Dataset) -> bool:
    """Whether a store holds the sink analysis (v3 on; a v2 store opens without it)."""
    return all(name in ds for name in SINK_VARIABLES)


MISSING = "not in this store (built by a vitscope before {} were stored): rebuild with `vitscope build … --overwrite`"
SINKS_MISSING = MISSING.format("sinks")


def check(path: Path, fingerprint: dict | None = None) -> dict:
    """Validate a store (exists, vitscope, current schema, optionally same fingerprint); returns its attrs."""
    path = Path(path)
    if not path.exists():
        raise VitscopeError(f"store not found: {path} (build one with `vitscope build ... --out {path}`)")
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        raise VitscopeError(f"{path} is not a zarr store (build one with `vitscope build`)") from None
    version = attrs.get("vitscope_schema")
    if version is None:
        raise VitscopeError(f"{path} is a zarr store but not a vitscope store (no vitscope_schema attribute)")
    if version not in READABLE_SCHEMAS:
        age = "older" if version < SCHEMA_VERSION else "newer"
        raise StoreMismatch(
            f"{path} has store schema v{version}, {age} than this vitscope's v{SCHEMA_VERSION}: "
            f"rebuild it with `vitscope build ... --out {path} --overwrite`"
        )
    if fingerprint is not None:
        stored = json.loads(attrs["fingerprint"])
        diff = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        if diff:
            what = ", ".join(f"{k} ({stored.get(k)} ≠ {fingerprint.get(k)})" for k in diff[:3])
            raise StoreMismatch(
                f"{path} was built from something else: {what}. Refusing to mix; "
                "pass --overwrite to replace it, or another --out"
            )
    return attrs


def check_image(path: str | Path, image: int, valid: np.ndarray, image_ids) -> int:
    """`image` as an int if it is in the store at `path` and was readable at build (`valid`, `image_ids`: its own)."""
    n = len(valid)
    if not 0 <= int(image) < n:
        raise VitscopeError(f"image {image} out of range: {path} has {n} images (0..{n - 1})")
    if not bool(valid[int(image)]):
        raise VitscopeError(f"image {image} ({image_ids[int(image)]}) of {path} could not be read at build: pick "
                            "another (vitscope info lists the store's images)")
    return int(image)


@_writes
def remove(path: Path) -> None:
    if Path(path).exists():
        shutil.rmtree(path)


def done_chunks(path: Path) -> np.ndarray:
    return zarr.open_array(str(Path(path) / "chunk_done"), mode="r")[:]


@_writes
def write_chunk(path: Path, index: int, shape: Shape, arrays: dict[str, np.ndarray]) -> None:
    """Write chunk `index` of the per-image variables, then mark it done (in that order: a kill
    between the two only means the chunk is computed again)."""
    start = index * shape.chunk
    stop = min(start + shape.chunk, shape.images)
    variables = shape.variables()
    ds = xr.Dataset({k: (variables[k][0], np.asarray(v, dtype=variables[k][1])) for k, v in arrays.items()})
    ds.to_zarr(path, region={"image": slice(start, stop)}, **FORMAT)
    zarr.open_array(str(Path(path) / "chunk_done"), mode="r+")[index] = True


@_writes
@_whole_or_none
def write_fixed(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write variables without an image dimension (the linear probe) whole, before any chunk: a resumed build
    reads them back."""
    variables = read_shape(path).variables()
    for k, v in arrays.items():
        zarr.open_array(str(Path(path) / k), mode="r+")[...] = np.asarray(v, dtype=variables[k][1])


@_writes
def write_global(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Write whole-set results (latents, layouts, head kinds; any subset) and mark the store complete, i.e.
    readable (`layouts_pending` in `attrs` says which layouts are still to come)."""
    shape = read_shape(path)
    variables = shape.variables()
    per_image = {k: v for k, v in arrays.items() if "image" in variables[k][0]}
    if per_image:
        ds = xr.Dataset({k: (variables[k][0], np.asarray(v, dtype=variables[k][1])) for k, v in per_image.items()})
        ds.to_zarr(path, region={"image": slice(0, shape.images)}, **FORMAT)
    for k in arrays.keys() - per_image.keys():  # [layer, head]: small, written whole (a region needs `image`)
        zarr.open_array(str(Path(path) / k), mode="r+")[...] = np.asarray(arrays[k], dtype=variables[k][1])
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.update({**attrs, "complete": True})
    zarr.consolidate_metadata(str(path))


REMOVED = ("the store {path} was removed or moved while in use: restart `vitscope serve` (or run the command again) "
           "on its new path")


class _Watched(LocalStore):
    """A store folder whose removal is noticed: zarr reads a chunk it cannot find as the fill value, so the lazy
    reads of a removed store (thumbnails, the service's importances) would give black images and NaN, silently."""

    async def get(self, key, *args, **kwargs):
        got = await super().get(key, *args, **kwargs)
        if got is None and not self.root.is_dir():
            raise VitscopeError(REMOVED.format(path=self.root))
        return got


_opened: OrderedDict[tuple, xr.Dataset] = OrderedDict()  # finished stores, by path and when their metadata changed
_opened_lock = threading.Lock()


def _written(path: Path) -> tuple | None:
    """(path, when its consolidated metadata and its attributes were last written), None if it has neither."""
    try:
        return (str(path.resolve()), *((path / f).stat().st_mtime_ns for f in (".zmetadata", ".zattrs")))
    except OSError:
        return None


def open_store(path: str | Path, *, unfinished: bool = False) -> xr.Dataset:
    """Open a store for reading (one clear line if it is missing, foreign, old, or unfinished unless `unfinished`:
    then the chunks not yet written read as fill values). A finished store is opened once per process: every reader
    (app, service, comparison) shares it, through its own shallow copy, until the store is written again."""
    path = Path(path)
    key = None if unfinished else _written(path)
    with _opened_lock:
        if key in _opened:
            _opened.move_to_end(key)
            return _opened[key].copy()  # what a reader sets in its copy (attributes, loaded arrays) stays its own
    attrs = check(path)
    if not (unfinished or attrs.get("complete")):
        raise VitscopeError(f"{path} is an unfinished build: run the same `vitscope build` again to resume it")
    ds = open_dataset(path)
    ds.attrs["class_names"] = list(ds["class_name"].values)
    if key is not None and attrs.get("complete"):
        with _opened_lock:
            _opened[key] = ds
            while len(_opened) > 8:
                _opened.popitem(last=False)
    return ds.copy()


def open_dataset(path: str | Path, *, fresh: bool = False) -> xr.Dataset:
    """The store as written so far, unchecked (the build's own later stages, Dask workers); `fresh` reads each
    array's own metadata instead of the consolidated copy, so variables written since the last consolidation
    are seen. Reading it after its folder is removed is one line (`REMOVED`)."""
    return xr.open_zarr(_Watched(Path(path), read_only=True), consolidated=not fresh)


def pending_layouts(path: str | Path) -> list[str]:
    """The layouts a store is still waiting for, as written now (a background build may be writing them); none
    for stores built before layouts could come later."""
    return list(zarr.open_group(str(path), mode="r").attrs.get("layouts_pending", []))


def read_arrays(path: str | Path, names: list[str] | set[str]) -> dict[str, np.ndarray]:
    """Variables as written now (not as the consolidated metadata last said), whole."""
    ds = open_dataset(path, fresh=True)
    return {name: ds[name].values for name in names}


def read_probe(path: str | Path) -> tuple[str, int, np.ndarray | None, np.ndarray | None]:
    """What a backbone store's `prob` was computed with: (prob basis, classes, probe coef, probe bias); the probe
    is None unless the basis is the linear probe."""
    ds = open_dataset(path, fresh=True)
    basis = ds.attrs.get("prob_basis", NO_BASIS)
    if basis == LINEAR_PROBE:
        return basis, int(ds.sizes["class"]), ds["probe_coef"].values, ds["probe_bias"].values
    return basis, int(ds.sizes.get("class", 1)), None, None


