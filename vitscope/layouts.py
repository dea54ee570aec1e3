"""The build's last stage: the tSNE layouts of a store that already opens (`layouts_pending` names those still to
come), each written as soon as it is done, the pattern autoencoder before the layout of its latents.

Apart from `build.py` because it runs on its own: after the per-image stage, on a resumed build with only layouts
left, or in a background thread while `vitscope demo` serves the app (whose views ask `layouts_status` here).

Each layout is fitted on a seeded sample (`layout.fit_sample`: every point of a small store) and the rest placed
by the fitted layout's transform in blocks of whole store chunks, then refined together (`layout.refine`, in this
process); the autoencoder trains on a sample and encodes
in the same blocks. With `--workers` / `--scheduler` the blocks are Dask tasks, like the per-image work: a block's
result does not depend on where it runs (`layout.Reference`), so the store is the same either way.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from vitscope import store
from vitscope.analysis import autoencoder, layout, probe
from vitscope.config import BuildConfig
from vitscope.errors import VitscopeError
from vitscope.vocab import WHOLE_HEAD

LAYOUT_VARIABLES = ("image_xy", "head_xy_cls", "head_xy_patch")  # in the order they are computed
BLOCK_POINTS = 50_000  # points per transform or encoding task (whole store chunks, at least one)


def features(ds: xr.Dataset, name: str, metric: str, images: slice = slice(None)) -> np.ndarray:
    """What layout `name` lays out, for the readable images of `images`: [points, D], points in (image, layer,
    head) order. `metric`: the image layout's importance metric."""
    valid = ds["valid"].values[images]
    nv, L, H = int(valid.sum()), ds.sizes["layer"], ds.sizes["head"]
    if name == "image_xy":
        return ds["importance"].sel(mode=WHOLE_HEAD, metric=metric)[images].values[valid].reshape(nv, L * H)
    var = "cls_attention" if name == "head_xy_cls" else "pattern_latent"
    return ds[var][images].values[valid].astype(np.float32).reshape(nv * L * H, -1)


@dataclass(frozen=True)
class _Blocks:
    """The store's images in blocks of whole chunks, ~BLOCK_POINTS points each, and where each block's points
    start among all the readable images' points."""

    bounds: list[tuple[int, int]]  # [start, stop) image ranges
    offsets: list[int]  # first point of each block, and the total at the end

    @classmethod
    def of(cls, valid: np.ndarray, chunk: int, per_image: int) -> _Blocks:
        step = chunk * max(1, BLOCK_POINTS // max(1, chunk * per_image))
        bounds = [(a, min(a + step, len(valid))) for a in range(0, len(valid), step)]
        counts = np.cumsum([0] + [int(valid[a:b].sum()) * per_image for a, b in bounds])
        return cls(bounds, [int(c) for c in counts])


def finish_layouts(out: Path, cfg: BuildConfig, timings: dict[str, float] | None = None) -> None:
    """The tSNE layouts still pending, each written as soon as it is done (the app shows it then), with the
    pattern autoencoder and its latents before the patch layout; the blocks on Dask with --workers/--scheduler."""
    ds = store.open_dataset(out)
    pending = store.pending_layouts(out)
    timings = {} if timings is None else timings
    timings.setdefault("tsne", 0.0)
    if not pending:
        return
    with dask_client(cfg) if (cfg.workers or cfg.scheduler) else nullcontext(None) as client:
        _finish(out, cfg, ds, pending, timings, client)


def _finish(out: Path, cfg: BuildConfig, ds: xr.Dataset, pending: list[str], timings: dict[str, float],
            client) -> None:
    lay = store.read_shape(out)
    valid = ds["valid"].values
    nv, L, H = int(valid.sum()), lay.layers, lay.heads
    metric = probe.layout_metric(ds.attrs, cfg.layout_metric)  # no class basis: a feature metric
    fits = dict(ds.attrs.get("layout_fits", {}))
    where = "" if client is None else f", {len(client.scheduler_info()['workers'])} Dask workers"

    def scatter(values: np.ndarray, shape: tuple[int, ...], fill=np.nan, dtype=np.float32) -> np.ndarray:
        full = np.full((lay.images, *shape), fill, dtype)
        full[valid] = values.reshape(nv, *shape)
        return full

    for name in [n for n in LAYOUT_VARIABLES if n in pending]:
        arrays, attrs = {}, {}
        per_image = 1 if name == "image_xy" else L * H
        blocks = _Blocks.of(valid, lay.chunk, per_image)
        if name == "head_xy_patch":
            t = time.perf_counter()
            maps = autoencoder.PackedMaps(ds["binary_index"].values[valid].reshape(nv * L * H, -1), lay.binary_size)
            model, losses = autoencoder.train_autoencoder(maps, latent=lay.latent, epochs=cfg.ae_epochs,
                                                          seed=cfg.seed, max_maps=cfg.ae_maps, device=cfg.device,
                                                          progress=cfg.progress)
            del maps
            state = _state(model) if client is None else client.scatter(_state(model), broadcast=True)
            latents = _run_blocks(client, blocks, _encode_block, (str(out), state, cfg.device), cfg,
                                  f"encoding maps{where}")
            attrs["ae_loss"] = [float(v) for v in losses]
            # written now: the workers read the latents of their blocks from the store
            kept = {"pattern_latent": scatter(latents, (L, H, lay.latent))}
            if lay.ae_params:  # a new image's maps are encoded by the same model (stores built before: not kept)
                kept["ae_weights"] = autoencoder.to_flat(model)
            store.write_global(out, kept, {**attrs, "layouts_pending": pending})
            ds = store.open_dataset(out)
            timings["autoencoder"] = time.perf_counter() - t
        t = time.perf_counter()
        x = features(ds, name, metric)
        sample = layout.fit_sample(len(x), cfg.seed, cfg.layout_points)
        x_fit = x[sample]
        with tqdm(total=layout.iterations(len(sample)), unit="it", disable=not cfg.progress,
                  desc=f"tSNE layouts: {name} ({len(sample)} of {len(x)} points)") as bar:
            y_fit, record = layout.fit_layout(x_fit, len(x), seed=cfg.seed, progress=bar.update)
        xy = np.full((len(x), 2), np.nan, np.float32)
        xy[sample] = y_fit
        fitted = np.zeros(len(x), bool)
        fitted[sample] = True
        if len(sample) < len(xy):  # the rest by the transform, block by block, then all together
            ref = (x_fit, y_fit, record)
            if client is not None:
                ref = client.scatter(ref, broadcast=True)
            rest = [~fitted[a:b] for a, b in zip(blocks.offsets[:-1], blocks.offsets[1:], strict=True)]
            threads = -1 if client is None else 1  # a worker has one thread (a place does not depend on it)
            placed = _run_blocks(client, blocks, _place_block, (str(out), name, metric, ref, threads), cfg,
                                 f"placing the rest of {name}{where}", extra=rest)
            xy[~fitted] = placed
            # one bar: the neighbour search (2 N points; minutes at 1.44 M) as its first half, the iterations its second
            step = max(1, 2 * len(x) // layout.REFINE_ITER)  # an iteration's share, in points
            with tqdm(total=2 * len(x) + step * layout.REFINE_ITER, disable=not cfg.progress,
                      bar_format="{l_bar}{bar}| {elapsed}",
                      desc=f"tSNE layouts: refining {name} ({len(x)} points: neighbours, then iterations)") as bar:
                xy, record = layout.refine(x, xy, sample, record, seed=cfg.seed, searched=bar.update,
                                           progress=lambda k, step=step, bar=bar: bar.update(k * step))
        del x
        timings["tsne"] += time.perf_counter() - t
        shape = (2,) if name == "image_xy" else (L, H, 2)
        arrays[name] = scatter(xy, shape)
        if lay.fits:  # stores built before have no place for the record: new images go by nearest neighbours
            arrays[f"{name}_fit"] = scatter(fitted, shape[:-1], False, bool)
            fits[name] = record
            attrs["layout_fits"] = fits
        pending.remove(name)
        store.write_global(out, arrays, {**attrs, "layouts_pending": pending})


def _run_blocks(client, blocks: _Blocks, fn, args: tuple, cfg: BuildConfig, desc: str,
                extra: list | None = None) -> np.ndarray:
    """fn(*args, start, stop[, extra]) over every block, here or as Dask tasks; the results in block order,
    concatenated. A progress bar counts points as blocks finish."""
    jobs = [(a, b) if extra is None else (a, b, e) for (a, b), e in
            zip(blocks.bounds, extra or [None] * len(blocks.bounds), strict=True)]
    sizes = [blocks.offsets[i + 1] - blocks.offsets[i] if extra is None else int(extra[i].sum())
             for i in range(len(jobs))]
    results: list = [None] * len(jobs)
    with tqdm(total=sum(sizes), desc=desc, unit="pt", unit_scale=True, disable=not cfg.progress) as bar:
        if client is None:
            for i, job in enumerate(jobs):
                results[i] = fn(*args, *job) if sizes[i] else None
                bar.update(sizes[i])
        else:
            from dask.distributed import as_completed

            todo = {client.submit(fn, *args, *job, pure=False): i for i, job in enumerate(jobs) if sizes[i]}
            for fut, got in as_completed(todo, with_results=True):
                results[todo[fut]] = got
                bar.update(sizes[todo[fut]])
    got = [r for r in results if r is not None]
    return np.concatenate(got) if got else np.zeros((0, 2), np.float32)


def _state(model: autoencoder.PatternAutoencoder) -> tuple[int, int, dict]:
    """A trained autoencoder as plain arrays (size, latent, weights) for a task."""
    return model.size, model.latent, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


# One rebuilt fitted layout (or autoencoder) per process, reused across its blocks: key → object.
_CACHE: dict = {}


def _cached(key: tuple, make):
    if key not in _CACHE:
        _CACHE.clear()  # one at a time: a layout's reference holds its sample
        _CACHE[key] = make()
    return _CACHE[key]


def _place_block(out: str, name: str, metric: str, ref: tuple, threads: int, start: int, stop: int,
                 rest: np.ndarray) -> np.ndarray:
    """Runs here or on a Dask worker: the places of block [start, stop)'s points that were not in the fit
    sample (`rest`: a mask over the block's points), by the fitted layout's transform."""
    x_fit, y_fit, record = ref
    reference = _cached(("layout", out, name, json.dumps(record), threads),
                        lambda: layout.Reference(x_fit, y_fit, record, n_jobs=threads))
    ds = store.open_dataset(out)
    return reference.place(features(ds, name, metric, slice(start, stop))[rest])


def _encode_block(out: str, state: tuple[int, int, dict], device: str, start: int, stop: int) -> np.ndarray:
    """Runs here or on a Dask worker: the latents of block [start, stop)'s maps."""
    import torch

    size, latent, weights = state
    model = autoencoder.PatternAutoencoder(size, latent)  # small: rebuilt per block
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    ds = store.open_dataset(out)
    valid = ds["valid"].values[start:stop]
    index = ds["binary_index"][start:stop].values[valid]
    maps = autoencoder.PackedMaps(index.reshape(-1, index.shape[-1]), size)
    return autoencoder.encode(model, maps, device=device)


@contextmanager
def dask_client(cfg: BuildConfig) -> Iterator:
    """A Dask client for cfg: a LocalCluster of `--workers` processes on 127.0.0.1 (one thread each: the cores
    shared out), or the `--scheduler`'s; closed on exit."""
    import torch
    from dask.distributed import Client, LocalCluster

    if cfg.scheduler:
        try:
            client = Client(cfg.scheduler, timeout="20s")
        except OSError as e:
            raise VitscopeError(f"cannot reach the Dask scheduler at {cfg.scheduler}: {e}") from None
        cluster = None
    else:
        threads = max(1, (torch.get_num_threads() or 1) // cfg.workers)
        cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, env={"OMP_NUM_THREADS": str(threads),
                                                          "OMP_WAIT_POLICY": "PASSIVE"})
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# Layouts computed in a background thread of this process: store path → (thread, [status]).
_BACKGROUND: dict[str, tuple[threading.Thread, list[str]]] = {}


def compute_layouts(out: Path, cfg: BuildConfig, later: bool, timings: dict[str, float]) -> None:
    """The pending layouts now, or (`later`) in a background thread of this process (`layouts_status`)."""
    if not later:
        finish_layouts(out, cfg, timings)
        return
    key = str(Path(out).resolve())
    status = ["running"]

    def run() -> None:
        try:
            finish_layouts(out, cfg, timings)
        except Exception as e:  # noqa: BLE001 - a thread's error: one line, the store keeps what it has
            status[0] = f"failed: {e}"
            again = "" if isinstance(e, VitscopeError) else "; run the same command again to retry"  # its own says
            print(f"vitscope: computing the layouts of {out} failed: {e}{again}", file=sys.stderr)
            return
        status[0] = "done"
        times = ", ".join(f"{k} {timings[k]:.1f} s" for k in ("autoencoder", "tsne") if k in timings)
        if cfg.progress:
            print(f"layouts of {out} ready ({times}): the app shows them now", file=sys.stderr)

    thread = threading.Thread(target=run, name=f"vitscope layouts {out}", daemon=True)
    _BACKGROUND[key] = (thread, status)
    thread.start()


def layouts_status(path: str | Path) -> str | None:
    """"running", "done" or "failed: …" for layouts computed in this process's background; None otherwise."""
    got = _BACKGROUND.get(str(Path(path).resolve()))
    return None if got is None else got[1][0]


def wait_layouts(path: str | Path, timeout: float | None = None) -> str | None:
    """Wait for this process's background layouts of a store (if any); their status then."""
    got = _BACKGROUND.get(str(Path(path).resolve()))
    if got is not None:
        got[0].join(timeout)
    return layouts_status(path)
