"""The build's last stage: the tSNE layouts of a store that already opens (`layouts_pending` names those still to
come), each written as soon as it is done, the pattern autoencoder before the layout of its latents.

Apart from `build.py` because it runs on its own: after the per-image stage, on a resumed build with only layouts
left, or in a background thread while `vitscope demo` serves the app (whose views ask `layouts_status` here).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vitscope import store
from vitscope.analysis import autoencoder, layout, probe
from vitscope.config import BuildConfig
from vitscope.vocab import WHOLE_HEAD

LAYOUTS = ("image_xy", "head_xy_cls", "head_xy_patch")  # in the order they are computed


def pending_layouts(attrs: dict) -> list[str]:
    """The layouts a store opens without yet (none for stores built before layouts could come later)."""
    return list(attrs.get("layouts_pending", []))


def finish_layouts(out: Path, cfg: BuildConfig, timings: dict[str, float] | None = None) -> None:
    """The tSNE layouts still pending, each written as soon as it is done (the app shows it then), with the
    pattern autoencoder and its latents before the patch layout."""
    import xarray as xr

    ds = xr.open_zarr(str(out), consolidated=True)
    lay = store.read_layout(out)
    valid = ds["valid"].values
    nv, L, H = int(valid.sum()), lay.layers, lay.heads

    def scatter(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        full = np.full((lay.images, *shape), np.nan, np.float32)
        full[valid] = values.reshape(nv, *shape)
        return full

    pending = pending_layouts(ds.attrs)
    timings = {} if timings is None else timings
    timings.setdefault("tsne", 0.0)
    for name in [n for n in LAYOUTS if n in pending]:
        arrays, attrs = {}, {}
        if name == "image_xy":
            metric = probe.layout_metric(ds.attrs, cfg.layout_metric)  # no class basis: a feature metric
            data = ds["importance"].sel(mode=WHOLE_HEAD, metric=metric).values[valid].reshape(nv, L * H)
        elif name == "head_xy_cls":
            data = ds["cls_attention"].values[valid].astype(np.float32).reshape(nv * L * H, -1)
        else:
            t = time.perf_counter()
            maps = autoencoder.PackedMaps(ds["binary_index"].values[valid].reshape(nv * L * H, -1), lay.binary_size)
            model, losses = autoencoder.train_autoencoder(maps, latent=lay.latent, epochs=cfg.ae_epochs,
                                                          seed=cfg.seed, max_maps=cfg.ae_maps, device=cfg.device,
                                                          progress=cfg.progress)
            data = autoencoder.encode(model, maps, device=cfg.device, progress=cfg.progress)  # [Nv·L·H, latent]
            arrays["pattern_latent"] = scatter(data, (L, H, lay.latent))
            attrs["ae_loss"] = [float(v) for v in losses]
            timings["autoencoder"] = time.perf_counter() - t
        t = time.perf_counter()
        with tqdm(total=layout.iterations(len(data)), desc=f"tSNE layouts: {name} ({len(data)} points)",
                  unit="it", disable=not cfg.progress) as bar:
            xy = layout.tsne_2d(data, seed=cfg.seed, progress=bar.update)
        timings["tsne"] += time.perf_counter() - t
        arrays[name] = scatter(xy, (2,) if name == "image_xy" else (L, H, 2))
        pending.remove(name)
        store.write_global(out, arrays, {**attrs, "layouts_pending": pending})


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
            print(f"vitscope: computing the layouts of {out} failed: {e}; run the same command again to retry",
                  file=sys.stderr)
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
