"""Pruning curves: heads pruned one after another in an order (exact importance, the gradient proxy, random), and
how many heads a set of images can lose before top-1 drops (the prunable count), for `Service.curve`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import xarray as xr

from vitscope.engine import prune
from vitscope.errors import VitscopeError
from vitscope.models import ViTAdapter
from vitscope.service.requests import NO_BASIS_WHY
from vitscope.vocab import CURVE_ORDERS, NO_BASIS, WHOLE_HEAD, curve_order, curve_parts, head_name

Progress = Callable[[int, int], None] | None
GROUP = 32  # images per baseline pass of a pruning curve (bounds memory)
PRUNABLE_CHUNK = 8  # steps a set curve's prunable count computes per round beyond the curve's own


class Service(Protocol):
    """What a curve needs of `vitscope.service.Service`: the model, the store and its images."""

    adapter: ViTAdapter
    prob_basis: str
    path: Path
    ds: xr.Dataset
    valid: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def check_image(self, image: int) -> int: ...

    def inputs(self, images: Sequence[int]) -> torch.Tensor: ...


def curve(svc: Service, image: int | None, cls: int | None, orders: Sequence[str] | str, steps: Sequence[int] | None,
          seed: int, progress: Progress, max_images: int, tol: float) -> dict:
    """`Service.curve`."""
    if svc.prob_basis == NO_BASIS:  # neither P'[true] nor top-1 is defined, whatever the order
        raise VitscopeError(NO_BASIS_WHY)
    ad = svc.adapter
    n_heads = ad.num_layers * ad.num_heads
    names = list(dict.fromkeys(curve_order(o) for o in ([orders] if isinstance(orders, str) else orders)))
    if not names:
        raise VitscopeError(f"a pruning curve needs at least one order: {', '.join(CURVE_ORDERS)}")
    if not isinstance(tol, int | float) or not 0 <= tol < 1:
        raise VitscopeError(f"the prunable tolerance must be a number in [0, 1) (top-1 accuracy), got {tol!r}")
    if image is not None and cls is not None:
        raise VitscopeError("a pruning curve is for one image or one class, not both")
    if image is not None:
        scope = [svc.check_image(image)]
    else:
        if cls is not None and not 0 <= int(cls) < len(svc.class_names):
            raise VitscopeError(f"class {cls} out of range: 0..{len(svc.class_names) - 1}")
        scope = np.flatnonzero(svc.valid & (True if cls is None else svc.labels == int(cls))).tolist()
        if not scope:
            raise VitscopeError(f"class {svc.class_names[int(cls)]!r} has no readable image in {svc.path}")
    total_images = len(scope)
    if len(scope) > max_images:  # a seeded sample keeps a curve over thousands of images interactive
        scope = sorted(np.random.default_rng(seed).choice(scope, max_images, replace=False).tolist())
    if steps is None:  # every step for one image of a small model; 25 steps for a set (one forward each)
        every = n_heads <= (150 if image is not None else 48)
        steps = list(range(n_heads + 1)) if every else sorted({round(v) for v in np.linspace(0, n_heads, 25)})
    steps = [int(s) for s in steps]
    if any(not 0 <= s <= n_heads for s in steps):
        raise VitscopeError(f"curve steps must be in 0..{n_heads} heads")
    ranked = {o: order_heads(svc, o, scope, seed) for o in names}
    tally = _Tally(progress, len(scope) * len(steps) * len(names))
    sums = prefix_sums(svc, scope, ranked, {o: steps for o in names}, tally, image is not None)
    out = {"kind": "curve", "image": image, "cls": cls, "images": len(scope), "of": total_images, "steps": steps,
           "y": "prob" if image is not None else "top1",
           "curves": {o: (sums[o] / len(scope)).tolist() for o in names},
           "orders": {o: [head_name(*h) for h in r] for o, r in ranked.items()}}
    if image is None:
        known = {o: dict(zip(steps, sums[o].round().astype(int).tolist(), strict=True)) for o in names}
        out["prunable"] = prunable(svc, scope, ranked, known, tol, tally)
        out["tol"] = float(tol)
        out["baseline"] = known[names[0]][0] / len(scope)
    return out


def prefix_sums(svc: Service, scope: list[int], ranked: dict[str, list[tuple[int, int]]], need: dict[str, list[int]],
                 tally: _Tally, image_curve: bool) -> dict[str, np.ndarray]:
    """Per order, the sum over `scope` of P'[true] (one image) or of top-1 correct at each of its needed steps;
    one baseline pass per group of images, shared by the orders (as are head sets two orders share)."""
    names = [o for o in need if need[o]]
    parts: dict[str, list[np.ndarray]] = {o: [] for o in names}
    units = sum(len(need[o]) for o in names)
    for g in range(0, len(scope), GROUP):
        group = scope[g:g + GROUP]
        base = prune.baseline(svc.adapter, svc.inputs(group), torch.as_tensor(svc.labels[group]))
        at, size = tally.done, len(group) * units
        res = prune.prefixes(svc.adapter, base, [ranked[o] for o in names], [need[o] for o in names],
                             lambda d, t, at=at, size=size: tally.report(at + size * d / max(t, 1)))
        for o, (prob, correct) in zip(names, res, strict=True):
            parts[o].append((prob if image_curve else correct).sum(0).double().numpy())
        tally.report(at + size)
    return {o: np.sum(parts[o], axis=0) if o in parts else np.zeros(0) for o in need}

def prunable(svc: Service, scope: list[int], ranked: dict[str, list[tuple[int, int]]], known: dict[str, dict[int, int]],
              tol: float, tally: _Tally) -> dict[str, int]:
    """Per order, heads pruned before top-1 falls below the unpruned top-1 − tol: the steps the curve lacks
    are computed PRUNABLE_CHUNK in the first round, twice as many in each next, in order, until the first such
    step (accuracy is not monotone)."""
    n_heads, m = svc.adapter.num_layers * svc.adapter.num_heads, len(scope)
    found: dict[str, int] = {}
    chunk = PRUNABLE_CHUNK  # doubled each round: a late drop costs log₂(heads) passes, not heads / 8
    while True:
        need = {}
        for o in ranked:
            if o in found:
                continue
            count, first = prunable_count(known[o], m, tol, n_heads)
            if count is not None:
                found[o] = count
            else:
                need[o] = [s for s in range(first, min(first + chunk, n_heads + 1)) if s not in known[o]]
        if not need:
            return {o: found[o] for o in ranked}
        tally.grow(m * sum(len(v) for v in need.values()))
        chunk *= 2
        for o, c in prefix_sums(svc, scope, ranked, need, tally, False).items():
            known[o] |= dict(zip(need[o], c.round().astype(int).tolist(), strict=True))

def order_heads(svc: Service, order: str, scope: list[int], seed: int) -> list[tuple[int, int]]:
    """The heads in `order` (a canonical name): a stable sort of the store's per-head means over `scope`, so
    ties keep head order (layer, then head) in both directions."""
    L, H = svc.adapter.num_layers, svc.adapter.num_heads
    if order == "random":
        flat = np.random.default_rng(seed).permutation(L * H)
    else:
        criterion, direction = curve_parts(order)
        if criterion == "exact":  # P'[true] when pruned alone: low = harmful
            harm = -svc.ds["importance"].isel(image=scope).sel(mode=WHOLE_HEAD, metric="prob").values
        else:  # the gradient proxy: large = harmful
            if "grad_importance" not in svc.ds:
                raise VitscopeError(f"{svc.path} has no grad_importance: rebuild it for the proxy orders")
            harm = svc.ds["grad_importance"].isel(image=scope).values
        harm = harm.astype(np.float64).mean(0).reshape(-1)
        if not np.isfinite(harm).all():
            raise VitscopeError(f"{svc.path} has no finite {criterion} score for every head over these "
                                "images: choose another order")
        flat = np.argsort(-harm if direction == "harmful-first" else harm, kind="stable")
    return [(int(j) // H, int(j) % H) for j in flat]


def prunable_count(known: dict[int, int], m: int, tol: float, n_heads: int) -> tuple[int | None, int | None]:
    """From top-1 correct counts of m images at some steps ({n heads pruned: count}): (the prunable count, None) once
    they decide it, else (None, the first step still needed). The count is the first step n ≥ 1 whose accuracy is
    below the unpruned accuracy − tol, minus one; n_heads if no step is. Losing exactly tol stays within."""
    if 0 not in known:
        return None, 0
    for n in range(1, n_heads + 1):
        if n not in known:
            return None, n
        if (known[0] - known[n]) / m > tol + 1e-12:
            return n - 1, None
    return n_heads, None


class _Tally:
    """A curve's progress in image × step units; the total grows when the prunable count needs more steps."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def grow(self, units: int) -> None:
        self.total += units

    def report(self, done: float) -> None:
        self.done = int(done)
        if self.progress is not None:
            self.progress(self.done, self.total)
