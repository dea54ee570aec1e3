"""Input attributions of stored images and their faithfulness, for `Service.explain` and `Service.explain_set`.

Per image: the attention and its gradient from one forward and backward, the three maps from them, occlusion from one
masked forward per patch, then each map's two faithfulness curves from masked forwards (a mask that several curves
share, such as none at all, runs once). The target is the image's stored label: the true class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import xarray as xr

from vitscope.analysis import explain as ex
from vitscope.engine.explain import attention_gradients, occluded_probs
from vitscope.errors import VitscopeError
from vitscope.models import ViTAdapter
from vitscope.service.requests import NO_BASIS_WHY
from vitscope.vocab import NO_BASIS, explain_methods

Progress = Callable[[int, int], None] | None


class Service(Protocol):
    """What an explanation needs of `vitscope.service.Service`."""

    adapter: ViTAdapter
    prob_basis: str
    path: Path
    ds: xr.Dataset  # the store
    valid: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def check_image(self, image: int) -> int: ...

    def input(self, image: int) -> torch.Tensor: ...


def explain(svc: Service, image: int, methods: Sequence[str] | None = None, progress: Progress = None) -> dict:
    """One image's patch maps ({method: [N]}), faithfulness curves ({method: {direction: [10]}}) and their AUCs, for
    `methods` (default: all four)."""
    methods = explain_methods(methods)
    if svc.prob_basis == NO_BASIS:
        raise VitscopeError(NO_BASIS_WHY)
    image = svc.check_image(int(image))
    ad, target = svc.adapter, int(svc.labels[image])
    x = svc.input(image)[0]
    N = ad.grid**2
    maps = {}
    if set(methods) - {"occlusion"}:
        attn, grad, _, _ = attention_gradients(ad, x[None], torch.tensor([target]))
        maps = ex.attention_maps(attn[0], grad[0], ad.num_prefix)
    occlusion = "occlusion" in methods
    steps = (N if occlusion else 0) + 1 + 2 * len(methods) * (len(ex.FRACTIONS) - 1)  # at most: shared masks run once

    def report(offset: int) -> Progress:
        return None if progress is None else lambda done, _total: progress(offset + done, steps)

    single = torch.cat([torch.zeros(1, N, dtype=torch.bool), torch.eye(N, dtype=torch.bool)[:N if occlusion else 0]])
    probs = occluded_probs(ad, x, target, single, progress=report(0)).double().numpy()
    if occlusion:
        maps["occlusion"] = probs[0] - probs[1:]
    maps = {m: maps[m] for m in methods}

    wanted = {(m, d): ex.removal_masks(maps[m], d) for m in methods for d in ex.DIRECTIONS}
    unique: dict[bytes, int] = {np.zeros(N, bool).tobytes(): 0}  # the unoccluded image: probs[0] above
    rows = []
    for masks in wanted.values():
        for mask in masks:
            if mask.tobytes() not in unique:
                unique[mask.tobytes()] = len(unique)
                rows.append(mask)
    more = occluded_probs(ad, x, target, torch.as_tensor(np.array(rows).reshape(-1, N)), progress=report(len(single)))
    p = np.concatenate([probs[:1], more.double().numpy()])
    if progress is not None:
        progress(steps, steps)
    curves = {m: {d: p[[unique[k.tobytes()] for k in wanted[m, d]]] for d in ex.DIRECTIONS} for m in methods}
    return {"image": image, "target": target, "grid": [ad.grid, ad.grid],
            "maps": {m: v.tolist() for m, v in maps.items()},
            "curves": {m: {d: c.tolist() for d, c in cs.items()} for m, cs in curves.items()},
            "auc": {m: {d: ex.auc(c) for d, c in cs.items()} for m, cs in curves.items()}}


def sample(svc: Service, count: int, cls: int | None, seed: int) -> tuple[list[int], int]:
    """(a seeded sample of `count` readable images, of class `cls` if given, in store order; how many there were)."""
    if count < 1:
        raise VitscopeError(f"--images needs a count of at least 1, got {count}")
    scope = np.flatnonzero(svc.valid & (True if cls is None else svc.labels == int(cls)))
    if not len(scope):
        raise VitscopeError(f"no readable image{'' if cls is None else ' of class ' + repr(svc.class_names[cls])} "
                            f"in {svc.path}")
    picked = scope if count >= len(scope) else np.sort(np.random.default_rng(seed).choice(scope, count, replace=False))
    return [int(i) for i in picked], len(scope)


def explain_set(svc: Service, count: int, cls: int | None = None, seed: int = 0,
                methods: Sequence[str] | None = None, progress: Progress = None) -> dict:
    """The faithfulness benchmark over a seeded sample: per method and direction the mean AUC, its 95 % bootstrap
    interval (seeded), and per direction the most faithful method."""
    methods = explain_methods(methods)
    if svc.prob_basis == NO_BASIS:
        raise VitscopeError(NO_BASIS_WHY)
    images, of = sample(svc, count, cls, seed)
    aucs = {m: {d: [] for d in ex.DIRECTIONS} for m in methods}
    for n, image in enumerate(images):
        r = explain(svc, image, methods)
        for m in methods:
            for d in ex.DIRECTIONS:
                aucs[m][d].append(r["auc"][m][d])
        if progress is not None:
            progress(n + 1, len(images))
    mean = {m: {d: float(np.mean(v)) for d, v in ds.items()} for m, ds in aucs.items()}
    return {"images": images, "of": of, "cls": cls, "seed": seed, "mean_auc": mean,
            "interval": {m: {d: list(ex.bootstrap_interval(v, seed)) for d, v in ds.items()} for m, ds in aucs.items()},
            "most_faithful": ex.most_faithful(mean)}
