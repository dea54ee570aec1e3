"""`vitscope build`: the orchestration of the analysis of an image set into one store; chunked and resumable.

Per image chunk: preprocess, the per-image analysis of `vitscope.per_image` batch by batch, write the chunk's
region, mark it done. Then, over the whole set: head consistency and kinds (the store opens from here on, with
`layouts_pending` naming the layouts still to come), then the tSNE layouts (`vitscope.layouts`): `vitscope
demo` serves the app at that point and computes them in a background thread (`layouts_later`); the views fill
them in as they land.
Chunks run in this process or on a Dask cluster (each worker writes its own regions).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vitscope import store
from vitscope.analysis import autoencoder, binary, consistency, probe, sinks
from vitscope.config import BuildConfig, cache_root
from vitscope.errors import VitscopeError, check_writable
from vitscope.imagesets.folders import BadImage, ImageSet, Preprocessor, image_folder
from vitscope.layouts import LAYOUT_VARIABLES, compute_layouts, dask_client
from vitscope.models import ViTAdapter, load_model, weights_hash
from vitscope.per_image import analyse_batch, why_no_direct_effects
from vitscope.text import printable
from vitscope.vocab import CLASSIFIER, LINEAR_PROBE, NO_BASIS


def demo_store(device: str = "cpu", limit: int | None = None, *, layouts_later: bool = False,
               progress: bool = True) -> Path:
    """The demo store in the cache: built on first use (progress bars), reused after; rebuilt if stale.

    `layouts_later` returns as soon as the store opens (per-image analysis and head kinds done) and computes
    the layouts in a background thread (`vitscope.layouts.layouts_status`, `wait_layouts`): the app can be
    served meanwhile.
    """
    from vitscope.errors import StoreMismatch

    name = "demo.zarr" if limit is None else f"demo-{limit}.zarr"
    cfg = BuildConfig(model="demo", images="demo", out=cache_root() / name, device=device, limit=limit,
                      progress=progress)
    try:
        return build(cfg, layouts_later=layouts_later)
    except StoreMismatch as e:
        print(f"rebuilding the demo store: {e}", file=sys.stderr)
        return build(replace(cfg, overwrite=True), layouts_later=layouts_later)


def open_inputs(cfg: BuildConfig) -> tuple[ViTAdapter, ImageSet]:
    adapter = load_model(cfg.model, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint, device=cfg.device)
    if cfg.images == "demo":
        from vitscope.imagesets import demo

        images = demo.image_set(cfg.limit)
    else:
        images = image_folder(cfg.images, adapter.num_classes, cfg.labels, cfg.limit, cfg.seed)
    return adapter, images


def build(cfg: BuildConfig, *, layouts_later: bool = False, timings: dict[str, float] | None = None) -> Path:
    """Build (or resume) the store at cfg.out; returns its path. `timings` (if given) receives the seconds
    spent on the images, the autoencoder and the tSNE layouts.

    With `layouts_later` it returns once the store opens and computes the layouts in a background thread of
    this process (a process that ends first leaves them pending: the same build again finishes them).
    """
    out = Path(cfg.out)
    timings = {} if timings is None else timings
    if not out.exists():
        check_writable(out, elsewhere=store.ELSEWHERE)  # before the model loads (and a backbone's probe is fitted)
    adapter, images = open_inputs(cfg)
    pre = Preprocessor(adapter.model)
    fingerprint = {"model": adapter.spec, "weights": weights_hash(adapter.model), "images": images.fingerprint(),
                   "schema": store.SCHEMA_VERSION, **cfg.params()}
    if out.exists() and cfg.overwrite:
        store.remove(out)
    if out.exists():
        attrs = store.check(out, fingerprint)
        # a backbone: the probe it was built with, never refitted
        adapter = probe.with_stored_head(adapter, *store.read_probe(out))
        pending = store.pending_layouts(out)
        if attrs.get("complete") and not pending:
            _say(cfg, f"{out} is already built (same model, images and parameters); nothing to do")
            return out
        if attrs.get("complete"):
            _say(cfg, f"resuming {out}: computing its layouts ({', '.join(pending)})")
            compute_layouts(out, cfg, layouts_later, timings)
            return out
        _say(cfg, f"resuming {out}: {int(store.done_chunks(out).sum())} of {store.read_shape(out).chunks} "
                  "chunks already done")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        adapter, fitted, basis_attrs = backbone_head(adapter, images, pre, cfg)
        lay = store.Shape(
            images=len(images), layers=adapter.num_layers, heads=adapter.num_heads, classes=adapter.num_classes,
            grid=adapter.grid, tokens=adapter.num_tokens, topk=min(5, adapter.num_classes), latent=cfg.latent,
            binary_size=min(cfg.binary_size, adapter.grid**2), binary_ones=binary.top_count(cfg.top, adapter.grid**2),
            thumb=tuple(pre.config["input_size"][1:]),
            chunk=cfg.chunk, store_attention=cfg.store_attention, registers=registers(adapter),
            features=0 if fitted is None else fitted.coef.shape[1], fits=True,
            ae_params=autoencoder.parameter_count(min(cfg.binary_size, adapter.grid**2), cfg.latent),
        )
        attrs = {"model_spec": adapter.spec, "model_class": type(adapter.model).__name__,
                 "model_pretrained": cfg.pretrained,
                 "model_checkpoint": str(Path(cfg.checkpoint).resolve()) if cfg.checkpoint else "",
                 "num_prefix_tokens": adapter.num_prefix, "patch_grid": adapter.grid,
                 "image_source": images.source, "data_config": json.dumps(pre.config), "params": str(cfg.params()),
                 **basis_attrs}
        why = why_no_direct_effects(adapter)
        if why is not None:
            attrs["effects_why"] = why
            _say(cfg, f"{adapter.spec}: no direct effects, {why}: direct_effect and output_norm will be NaN")
        store.create(out, lay, fingerprint, images.ids, images.class_names, attrs)
        if fitted is not None:  # before the first chunk: a resumed build reads it back
            store.write_fixed(out, {"probe_coef": fitted.coef, "probe_bias": fitted.bias})
    lay = store.read_shape(out)
    todo = [int(i) for i in np.flatnonzero(~store.done_chunks(out))]
    t = time.perf_counter()
    try:
        if todo and (cfg.workers or cfg.scheduler):
            _run_dask(cfg, todo, lay)
        elif todo:
            bar = tqdm(total=len(images), desc="analysing images", unit="img", disable=not cfg.progress,
                       initial=len(images) - sum(_chunk_len(lay, i) for i in todo))
            for i in todo:
                before = bar.n
                skipped = compute_and_write(adapter, images, pre, lay, cfg, i, on_batch=bar.update)
                for line in skipped:
                    bar.write(line, file=sys.stderr)
                bar.update(before + _chunk_len(lay, i) - bar.n)  # the chunk's unreadable images
            bar.close()
    except torch.OutOfMemoryError:
        raise VitscopeError(
            f"out of memory on {cfg.device} at --batch-size {cfg.batch_size}: run the same command with a smaller "
            f"--batch-size to resume; the {int(store.done_chunks(out).sum())} finished chunks are kept"
        ) from None
    timings["images"] = time.perf_counter() - t
    finish_heads(out, cfg)
    compute_layouts(out, cfg, layouts_later, timings)
    return out


def _say(cfg: BuildConfig, text: str) -> None:
    if cfg.progress:
        print(text, file=sys.stderr)


def _chunk_len(lay: store.Shape, index: int) -> int:
    return min(lay.chunk, lay.images - index * lay.chunk)


def compute_and_write(adapter: ViTAdapter, images: ImageSet, pre: Preprocessor, lay: store.Shape,
                      cfg: BuildConfig, index: int, on_batch: Callable[[int], object] | None = None) -> list[str]:
    """Compute chunk `index` and write it; returns one line per skipped image."""
    arrays, skipped = compute_chunk(adapter, images, pre, lay, cfg, index, on_batch)
    store.write_chunk(Path(cfg.out), index, lay, arrays)
    return skipped


def compute_chunk(adapter: ViTAdapter, images: ImageSet, pre: Preprocessor, lay: store.Shape,
                  cfg: BuildConfig, index: int, on_batch: Callable[[int], object] | None = None,
                  ) -> tuple[dict[str, np.ndarray], list[str]]:
    """All per-image variables of one chunk, as numpy arrays (invalid images keep fill values).

    `on_batch(n)` after each engine batch of n images: on a CPU a ViT-Ti's 64-image chunk takes minutes.
    """
    start = index * lay.chunk
    ids = range(start, start + _chunk_len(lay, index))
    sizes = lay.sizes()
    variables = lay.variables()
    arrays = {}
    for name in store.PER_CHUNK:
        if name in variables:
            dims, dtype = variables[name]
            arrays[name] = np.full([len(ids) if d == "image" else sizes[d] for d in dims],
                                   store.fill_value(dtype), dtype=dtype)
    arrays["label"][:] = images.labels[start:start + len(ids)]
    tensors, rows, skipped = [], [], []
    for r, i in enumerate(ids):
        try:
            x, thumb = pre(images.load(i))
        except BadImage as e:
            skipped.append(f"skipped {printable(images.ids[i])}: {printable(e)}")
            continue
        tensors.append(x)
        rows.append(r)
        arrays["thumbnail"][r] = thumb
    arrays["valid"][rows] = True
    for s in range(0, len(rows), cfg.batch_size):
        sel = rows[s:s + cfg.batch_size]
        x, y = torch.stack(tensors[s:s + cfg.batch_size]), torch.as_tensor(arrays["label"][sel])
        for k, v in analyse_batch(adapter, x, y, lay, cfg.top, cfg.precision).items():
            arrays[k][sel] = v
        if on_batch is not None:
            on_batch(len(sel))
    return arrays, skipped


def backbone_head(adapter: ViTAdapter, images: ImageSet, pre: Preprocessor, cfg: BuildConfig,
                  ) -> tuple[ViTAdapter, probe.Probe | None, dict]:
    """A classifier as it is; a backbone (no classifier) with a linear probe fitted on its unpruned features of
    the labelled images, or with no basis (the placeholder head): (adapter for the build, the probe, store attrs)."""
    if adapter.num_classes:
        return adapter, None, {"prob_basis": CLASSIFIER}
    classes = len(images.class_names)
    why = probe.why_no_probe(images.labels, classes)
    if why is not None:
        _say(cfg, f"{adapter.spec} has no classifier and {why}: prob and jsd will be NaN; cls_dist and patch_dist "
                  "are computed")
        return probe.placeholder(adapter, classes), None, probe.attrs_of(None, NO_BASIS, "", why)

    def load(i: int) -> torch.Tensor | None:
        try:
            return pre(images.load(i))[0]
        except BadImage:
            return None

    feats, rows = probe.unpruned_features(adapter, load, len(images), cfg.batch_size, cfg.progress)
    labels = images.labels[rows]
    why = probe.why_no_probe(labels, classes)  # unreadable images may leave too few
    if why is not None:
        _say(cfg, f"{adapter.spec} has no classifier and {why} among the readable images: prob and jsd will be NaN")
        return probe.placeholder(adapter, classes), None, probe.attrs_of(None, NO_BASIS, "", why)
    fitted = probe.fit_probe(feats, labels, classes, cfg.seed)
    feature = probe.feature_name(adapter)
    _say(cfg, f"{adapter.spec} has no classifier: linear probe on the {feature}, cross-validated accuracy "
              f"{fitted.cv_accuracy:.1%} ({fitted.folds} folds, C={fitted.C:g}); prob and jsd are the probe's")
    headed = probe.HeadedAdapter(adapter, fitted.coef, fitted.bias, LINEAR_PROBE)
    return headed, fitted, probe.attrs_of(fitted, LINEAR_PROBE, feature, None)


def registers(adapter: ViTAdapter) -> int:
    """Prefix tokens that are registers: timm's `num_reg_tokens`, or a Hugging Face config's `num_register_tokens`."""
    model = adapter.model
    count = getattr(model, "num_reg_tokens", None)
    if count is None:
        count = getattr(getattr(model, "config", None), "num_register_tokens", 0)
    return int(count or 0)


def finish_heads(out: Path, cfg: BuildConfig) -> None:
    """Head consistency, sink heads and kinds, the layers' frequent sinks and high-norm tokens, over every readable
    image; from here on the store opens, its layouts pending."""
    ds = store.open_dataset(out)
    lay = store.read_shape(out)
    valid = ds["valid"].values
    nv = int(valid.sum())
    if nv == 0:
        raise VitscopeError(f"no readable image in {cfg.images}: nothing to analyse")
    if nv < lay.images:  # said even with --quiet: it is about the user's images, not progress
        print(f"{lay.images - nv} unreadable images skipped (listed above); {nv} analysed", file=sys.stderr)
    index = ds["binary_index"].values[valid]
    agree = consistency.head_consistency(index, lay.binary_size)  # [L, H]
    ranks, patches = lay.sizes()["rank"], lay.grid**2
    share, targets = sinks.head_sink(index, lay.binary_size, ranks)
    arrays = {"head_consistency": agree, "head_kind": sinks.sink_kinds(consistency.head_kinds(agree), share),
              "head_sink_share": share, "head_sink_tokens": targets}
    for name in ("sink", "norm"):
        arrays[f"{name}_tokens"], arrays[f"{name}_frequency"] = sinks.frequent_tokens(
            ds[f"{name}_token"].values[valid], patches, ranks)
    store.write_global(out, arrays,
                       {"valid_images": nv, "layout_metric": probe.layout_metric(ds.attrs, cfg.layout_metric),
                        "layouts_pending": list(LAYOUT_VARIABLES)})


# -- Dask scale-out ----------------------------------------------------------------------------

_WORKER_CACHE: dict = {}


def _worker_chunk(cfg_dict: dict, index: int) -> list[str]:
    """Runs on a Dask worker: one model per worker process, reused across its chunks."""
    cfg = BuildConfig(**cfg_dict)
    key = (cfg.model, str(cfg.checkpoint), cfg.images, str(cfg.labels), cfg.limit, cfg.seed, cfg.device)
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        adapter, images = open_inputs(cfg)
        adapter = probe.with_stored_head(adapter, *store.read_probe(cfg.out))  # a backbone: the probe it stored
        _WORKER_CACHE[key] = (adapter, images, Preprocessor(adapter.model))
    adapter, images, pre = _WORKER_CACHE[key]
    return compute_and_write(adapter, images, pre, store.read_shape(Path(cfg.out)), cfg, index)


def _run_dask(cfg: BuildConfig, todo: list[int], lay: store.Shape) -> None:
    from dask.distributed import as_completed

    cfg_dict = asdict(cfg)
    cfg_dict["out"] = str(Path(cfg.out).resolve())  # workers may run elsewhere: absolute paths only
    if cfg.images != "demo":
        cfg_dict["images"] = str(Path(cfg.images).resolve())
    with dask_client(cfg) as client:
        futures = client.map(_worker_chunk, [cfg_dict] * len(todo), todo, pure=False)
        n_workers = len(client.scheduler_info()["workers"])
        with tqdm(total=sum(_chunk_len(lay, i) for i in todo), desc=f"analysing images ({n_workers} Dask workers)",
                  unit="img", disable=not cfg.progress) as bar:
            for fut, skipped in as_completed(futures, with_results=True):
                for line in skipped:
                    bar.write(line, file=sys.stderr)
                bar.update(_chunk_len(lay, todo[futures.index(fut)]))
