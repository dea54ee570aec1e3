"""`BuildConfig`: what a build depends on, frozen and checked when made; the one place its defaults are written
(and `cache_root`, where built stores go by default).

`vitscope build` reads its flags from the fields (default, help, flag name, choices), so a default or a help
text is never spelled twice. Light to import (no torch): a bad flag is one line before anything loads.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from vitscope.errors import VitscopeError
from vitscope.vocab import DEFAULT_METRIC, METRICS, PRECISIONS

# `--top` is a percent of a map's values, as users know it; the field is the fraction the analysis uses.
# The conversion happens here only: `add_arguments` shows the default as a percent, `from_args` divides.
TOP_PERCENT = 100


def _option(default: Any = MISSING, help: str | None = None, *, flag: str | None = None, scale: float = 1,
            group: str | None = None, choices: tuple | None = None, metavar: str | None = None) -> Any:
    """A field with what `vitscope build` needs to offer it as a flag (none without `help`)."""
    meta = {"help": help, "flag": flag, "scale": scale, "group": group, "choices": choices, "metavar": metavar}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build depends on (what goes into the store's fingerprint: `params`)."""

    model: str = _option(help="'demo', 'timm:<name>' (e.g. timm:vit_base_patch16_224) or 'hf:<folder or hub id>' "
                         "(a transformers model)")
    images: str = _option(help="folder with one sub-folder per class, a flat folder with --labels, or 'demo'")
    out: Path = _option(help="store to write (a .zarr folder)")
    pretrained: bool = _option(False, "download the model's weights through timm", group="weights")
    checkpoint: Path | None = _option(None, "local .pth/.safetensors state dict", group="weights")
    device: str = _option("cpu", "cpu, cuda or cuda:N")
    labels: Path | None = _option(None, "CSV of file,label (label: class index or name)")
    limit: int | None = _option(None, "sample this many images (seeded)")
    seed: int = _option(0, "seed of the image sample, the autoencoder and the layouts")
    batch_size: int = _option(16, "images per engine forward (lower it if the device runs out of memory)")
    chunk: int = _option(64, "images per store chunk (the unit of resuming)", flag="--chunk-size")
    precision: str = _option("float32", "engine precision", choices=PRECISIONS)
    top: float = _option(0.01, "binarise patch attention: top PERCENT of values", scale=TOP_PERCENT,
                         metavar="PERCENT")
    binary_size: int = _option(256)  # side of the binarised maps kept and learnt (larger ones are max-pooled to it)
    latent: int = _option(16, "pattern autoencoder latent size")
    ae_epochs: int = _option(10, "pattern autoencoder training epochs")
    ae_maps: int = _option(8192)  # the autoencoder trains on a seeded sample of this many maps (all are encoded)
    layout_points: int = _option(30_000, "fit each tSNE layout on a seeded sample of at most N points and place the "
                                 "rest by the fitted layout's transform", metavar="N")
    layout_metric: str = _option(DEFAULT_METRIC, f"metric of the Image Overview layout ({', '.join(METRICS)})")
    store_attention: bool = _option(False, "also keep float16 attention maps")
    overwrite: bool = _option(False, "replace an existing store built from other inputs")
    workers: int = _option(0, "start a local Dask cluster of N workers", group="dask")
    scheduler: str | None = _option(None, "address of an existing Dask scheduler (e.g. tcp://host:8786)",
                                    group="dask")
    progress: bool = _option(True, "no progress bars or progress lines (for scripts)", flag="--quiet")

    def __post_init__(self) -> None:
        at_least = {"batch_size": 1, "chunk": 1, "latent": 1, "ae_epochs": 0, "ae_maps": 1, "seed": 0, "workers": 0,
                    "layout_points": 2}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise VitscopeError(f"{_shown(name, getattr(self, name))}: give at least {low}")
        if self.limit is not None and self.limit < 1:
            raise VitscopeError(f"{_shown('limit', self.limit)}: give at least 1 image (or leave it out for all)")
        if not 0 < self.top <= 1:
            raise VitscopeError(f"{_shown('top', self.top)}: give a percent above 0 and at most {TOP_PERCENT}")
        if not 1 <= self.binary_size <= 256:  # the store keeps the maps' 1s as uint16 indices
            raise VitscopeError(f"binary_size {self.binary_size}: give 1 to 256")
        if self.precision not in PRECISIONS:
            raise VitscopeError(f"{_shown('precision', self.precision)}: choose from {', '.join(PRECISIONS)}")
        if self.layout_metric not in METRICS:
            raise VitscopeError(f"--layout-metric must be one of {', '.join(METRICS)}")
        if self.workers and self.scheduler:
            raise VitscopeError("give --workers or --scheduler, not both")

    def params(self) -> dict:
        """The analysis parameters in the store's fingerprint: a store built with others is not reused."""
        keys = ("top", "binary_size", "latent", "ae_epochs", "ae_maps", "layout_metric", "store_attention", "chunk",
                "precision", "seed", "limit")
        params = {k: getattr(self, k) for k in keys}
        # Only when not the default, so that stores built before it keep their fingerprint (their layouts are what
        # the default gives for up to 30k points a layout; a larger store is reused as built, never re-laid out).
        if self.layout_points != BuildConfig.layout_points:
            params["layout_points"] = self.layout_points
        return params


def cache_root() -> Path:
    """Where built stores go by default: $VITSCOPE_CACHE, the checkout's cache/ folder, or ~/.cache/vitscope."""
    if os.environ.get("VITSCOPE_CACHE"):
        return Path(os.environ["VITSCOPE_CACHE"]).expanduser()
    checkout = Path(__file__).resolve().parents[1] / "cache"
    return checkout if checkout.is_dir() else Path.home() / ".cache" / "vitscope"


def _flag(f: Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _shown(name: str, value: object) -> str:
    """A field's value as the user gave it on the command line: `--top 150` for top=1.5."""
    f = next(f for f in fields(BuildConfig) if f.name == name)
    if isinstance(value, float) and f.metadata["scale"] != 1:
        value = f"{value * f.metadata['scale']:g}"
    return f"{_flag(f)} {value}"


def help_of(name: str) -> str:
    """The help text of a field (for the other commands that take the same flag)."""
    return next(f.metadata["help"] for f in fields(BuildConfig) if f.name == name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per BuildConfig field with a help text: its default, type, choices and help from the field."""
    hints = get_type_hints(BuildConfig)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in fields(BuildConfig):
        meta = f.metadata
        if meta["help"] is None:
            continue
        where: Any = parser
        if meta["group"]:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            where = groups[meta["group"]]
        kind = next(t for t in (bool, int, float, Path, str) if t is hints[f.name] or t | None == hints[f.name])
        kw: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if kind is bool:
            kw["action"] = "store_false" if f.default else "store_true"  # --quiet turns progress off
        elif f.default is MISSING:
            kw.update(type=kind, required=True)
        else:
            default = f.default * meta["scale"] if meta["scale"] != 1 else f.default
            kw.update(type=kind, default=default, choices=meta["choices"])
        if kind is not bool and not meta["choices"]:
            kw["metavar"] = meta["metavar"] or _flag(f).lstrip("-").replace("-", "_").upper()
        where.add_argument(_flag(f), **kw)


def from_args(args: argparse.Namespace) -> BuildConfig:
    """The BuildConfig of parsed `add_arguments` flags (checked: a bad value is one VitscopeError line)."""
    values = {}
    for f in fields(BuildConfig):
        if f.metadata["help"] is not None:
            value = getattr(args, f.name)
            values[f.name] = value / f.metadata["scale"] if f.metadata["scale"] != 1 else value
    return BuildConfig(**values)
