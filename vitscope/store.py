"""The one place that knows the on-disk schema: an xarray Dataset in a zarr store (docs/architecture.md).

A store is created up front with every array at full size (metadata only), then filled in
image chunks by region writes; `chunk_done` records finished chunks so a killed build resumes,
and concurrent workers never write the same zarr chunk.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from zarr.storage import LocalStore

from vitscope import __version__
from vitscope.errors import StoreMismatch, VitscopeError, writing
from vitscope.vocab import BASE_PATTERNS, HEAD_KINDS, METRICS, MODES, OFFSETS, PATTERNS, SINK_RANKS, prefix_names

SCHEMA_VERSION = 3  # v3: attention sinks, high-norm tokens, prefix shares, the head kind `sink`
# Stores this vitscope opens: a v2 store lacks only v3's sink variables (the app and `info` say so); a build never
# resumes one (its fingerprint names its schema).
READABLE_SCHEMAS = (2, 3)
SINK_VARIABLES = ("sink_token", "sink_share", "prefix_share", "norm_token", "norm_ratio", "sink_tokens",
                  "sink_frequency", "norm_tokens", "norm_frequency", "head_sink_share", "head_sink_tokens")
FORMAT = dict(zarr_format=2)  # v2 metadata: readable by every zarr/xarray, no spec warnings


@dataclass(frozen=True)
class Layout:
    """Sizes of one store: images N, layers L, heads H, classes C, patch grid p, tokens P, …"""

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
                    feature=self.features, ae_param=self.ae_params, **{"class": self.classes})


PER_CHUNK = ("label", "valid", "baseline_prob", "topk_idx", "topk_prob", "importance", "grad_importance",
             "strength", "strength_entropy", "attention_distance", "cls_attention", "pattern_score",
             "pattern_label", "pattern_second", "pattern_offset", "binary_index", "thumbnail", "attention",
             "sink_token", "sink_share", "prefix_share", "norm_token", "norm_ratio")
GLOBAL = ("pattern_latent", "image_xy", "head_xy_cls", "head_xy_patch", "image_xy_fit", "head_xy_cls_fit",
          "head_xy_patch_fit", "ae_weights", "head_consistency", "head_kind",
          "sink_tokens", "sink_frequency", "norm_tokens", "norm_frequency", "head_sink_share", "head_sink_tokens")
# What integer codes mean, kept with the variables so that a store reads without vitscope.
CODES = {"pattern_label": ("patterns", PATTERNS), "pattern_second": ("patterns", PATTERNS),
         "pattern_offset": ("offsets", OFFSETS), "head_kind": ("kinds", HEAD_KINDS)}


# A store write that fails for a reason the user can fix is one line; a rerun resumes from the chunks marked done.
KEPT = ": finished chunks are kept"
ELSEWHERE = "build it where you can write (--out; $VITSCOPE_CACHE for `vitscope demo`)"


def _writes(fn):
    """A store write (its first argument: the store's path) whose fixable failure is one line (`errors.writing`)."""
    @functools.wraps(fn)
    def write(path, *args, **kwargs):
        with writing(path, kept=KEPT, elsewhere=ELSEWHERE):
            return fn(path, *args, **kwargs)
    return write


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
def create(path: Path, layout: Layout, fingerprint: dict, ids: list[str], class_names: list[str],
           attrs: dict) -> None:
    """Write the store's metadata at full size (no data yet): every chunk can then be written alone."""
    import dask.array as da

    sizes = layout.sizes()
    data = {}
    for name, (dims, dtype) in layout.variables().items():
        shape = tuple(sizes[d] for d in dims)
        chunks = tuple(layout.chunk if d == "image" else sizes[d] for d in dims)
        data[name] = xr.DataArray(da.full(shape, fill_value(dtype), dtype=dtype, chunks=chunks), dims=dims)
        if name in CODES:
            key, names = CODES[name]
            data[name].attrs[key] = list(names)
    coords = {
        "image_id": ("image", np.asarray(ids, dtype=str)),
        "class_name": ("class", np.asarray(class_names, dtype=str)),
        "mode": np.asarray(MODES),
        "metric": list(METRICS),
        "pattern": list(BASE_PATTERNS),
        "offset": list(OFFSETS),
        "xy": ["x", "y"],
        "prefix": prefix_names(layout.prefix, layout.registers),
    }
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(attrs, vitscope_schema=SCHEMA_VERSION, vitscope_version=__version__,
                    fingerprint=json.dumps(fingerprint, sort_keys=True), complete=False,
                    chunk_size=layout.chunk, layout=json.dumps(layout.__dict__))
    ds.to_zarr(path, mode="w", compute=False, **FORMAT)
    # progress markers: one zarr chunk per build chunk, so concurrent writers never collide
    done = zarr.create_array(store=str(path / "chunk_done"), shape=(layout.chunks,), chunks=(1,), dtype="bool",
                             fill_value=False, zarr_format=2)
    done.attrs["_ARRAY_DIMENSIONS"] = ["chunk"]  # an ordinary variable to xarray


def read_layout(path: Path) -> Layout:
    raw = json.loads(zarr.open_group(str(path), mode="r").attrs["layout"])
    raw["thumb"] = tuple(raw["thumb"])
    return Layout(**raw)  # a v2 store's layout has no `registers`: the default


def has_sinks(ds: xr.Dataset) -> bool:
    """Whether a store holds the sink analysis (v3 on; a v2 store opens without it)."""
    return all(name in ds for name in SINK_VARIABLES)


SINKS_MISSING = ("not in this store (built by a vitscope before sinks were stored): rebuild it with the same "
                 "`vitscope build … --overwrite` to add them")


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


@_writes
def remove(path: Path) -> None:
    if Path(path).exists():
        shutil.rmtree(path)


def done_chunks(path: Path) -> np.ndarray:
    return zarr.open_array(str(Path(path) / "chunk_done"), mode="r")[:]


@_writes
def write_chunk(path: Path, index: int, layout: Layout, arrays: dict[str, np.ndarray]) -> None:
    """Write chunk `index` of the per-image variables, then mark it done (in that order: a kill
    between the two only means the chunk is computed again)."""
    start = index * layout.chunk
    stop = min(start + layout.chunk, layout.images)
    variables = layout.variables()
    ds = xr.Dataset({k: (variables[k][0], np.asarray(v, dtype=variables[k][1])) for k, v in arrays.items()})
    ds.to_zarr(path, region={"image": slice(start, stop)}, **FORMAT)
    zarr.open_array(str(Path(path) / "chunk_done"), mode="r+")[index] = True


@_writes
@_whole_or_none
def write_fixed(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write variables without an image dimension (the linear probe) whole, before any chunk: a resumed build
    reads them back."""
    variables = read_layout(path).variables()
    for k, v in arrays.items():
        zarr.open_array(str(Path(path) / k), mode="r+")[...] = np.asarray(v, dtype=variables[k][1])


def prob_basis_row(attrs: dict) -> tuple[str, str]:
    """`vitscope info`'s line on what `prob` and `jsd` are computed from."""
    basis = attrs.get("prob_basis", "classifier")
    if basis == "linear probe":
        return ("prob basis", f"linear probe on the {attrs.get('probe_feature', 'feature')} (cross-validated "
                              f"accuracy {attrs.get('probe_cv_accuracy', float('nan')):.1%}); the model has no "
                              "classifier")
    if basis == "none":
        return ("prob basis", f"none: prob and jsd are NaN ({attrs.get('prob_basis_why', 'no labels')}); "
                              "cls_dist and patch_dist hold")
    return ("prob basis", "the model's classifier")


@_writes
def write_global(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Write whole-set results (latents, layouts, head kinds; any subset) and mark the store complete, i.e.
    readable (`layouts_pending` in `attrs` says which layouts are still to come)."""
    layout = read_layout(path)
    variables = layout.variables()
    per_image = {k: v for k, v in arrays.items() if "image" in variables[k][0]}
    if per_image:
        ds = xr.Dataset({k: (variables[k][0], np.asarray(v, dtype=variables[k][1])) for k, v in per_image.items()})
        ds.to_zarr(path, region={"image": slice(0, layout.images)}, **FORMAT)
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


def open_store(path: str | Path) -> xr.Dataset:
    """Open a finished store for reading (one clear line if it is missing, foreign, old or unfinished, or if it is
    removed while its data are read)."""
    attrs = check(Path(path))
    if not attrs.get("complete"):
        raise VitscopeError(f"{path} is an unfinished build: run the same `vitscope build` again to resume it")
    ds = xr.open_zarr(_Watched(Path(path), read_only=True), consolidated=True)
    ds.attrs["class_names"] = list(ds["class_name"].values)
    return ds


def head_kind_rows(kind: np.ndarray, agree: np.ndarray) -> list[tuple[str, str]]:
    """`vitscope info` rows on positional / content / mixed heads: counts, then one letter per head by layer."""
    counts = ", ".join(f"{name} {int((kind == k).sum())}" for k, name in enumerate(HEAD_KINDS))
    letters = "  ".join("".join(HEAD_KINDS[k][0].upper() if k >= 0 else "?" for k in layer) for layer in kind)
    return [("head kinds", f"{counts} (agreement of each head's maps across images, mean {np.nanmean(agree):.2f})"),
            ("by layer", letters)]


def describe(path: str | Path) -> str:
    """What `vitscope info STORE` prints: model, images, classes, size, schema, analyses present."""
    path = Path(path)
    attrs = check(path)
    lay = read_layout(path)
    done = int(done_chunks(path).sum())
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    ds = xr.open_zarr(str(path), consolidated=True)
    names = [str(c) for c in ds["class_name"].values]
    valid = int(ds["valid"].values.sum())
    fp = json.loads(attrs["fingerprint"])
    state = "complete" if attrs.get("complete") else f"unfinished: {done}/{lay.chunks} chunks (run build again)"
    pending = set(attrs.get("layouts_pending", []))  # a store opens before its layouts are all computed
    if pending:
        state = (f"layouts pending: {', '.join(sorted(pending))} (a running `vitscope demo` fills them in; "
                 "else run the same build again)")
        pending |= {"pattern_latent"} if "head_xy_patch" in pending else set()
    present = ([k for k in lay.variables() if (k not in GLOBAL or attrs.get("complete")) and k not in pending
                and k in ds] if done else ["none yet"])
    rows = [
        ("store", f"{path}  ({state})"),
        ("model", f"{attrs['model_spec']} ({attrs['model_class']}), weights {fp['weights']}"),
        ("shape", f"{lay.layers} layers × {lay.heads} heads, {lay.grid}×{lay.grid} patches, "
                  f"{attrs['num_prefix_tokens']} prefix token(s)"),
        ("images", f"{lay.images} listed, {valid} analysed, from {attrs['image_source']}"),
        ("classes", f"{lay.classes}: {', '.join(names[:5])}{', …' if len(names) > 5 else ''}"),
        ("size on disk", f"{size / 1e6:.1f} MB ({size / max(lay.images, 1) / 1e3:.1f} kB per image)"),
        prob_basis_row(attrs),
        ("schema", f"v{attrs['vitscope_schema']} (vitscope {attrs['vitscope_version']})"),
        ("analyses", ", ".join(present)),
    ]
    if attrs.get("complete"):
        rows += head_kind_rows(ds["head_kind"].values, ds["head_consistency"].values)
    if "ae_loss" in attrs:
        rows.append(("autoencoder", f"reconstruction loss {attrs['ae_loss'][-1]:.4f} after {len(attrs['ae_loss'])} "
                                    "epochs"))
    return "\n".join(f"{k:>13}: {v}" for k, v in rows)
