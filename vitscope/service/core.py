"""On-demand engine work for one store: attention, heads pruned together, pairs, pruning curves, saliency.

Raw attention is not stored by default; the service reloads the store's model once per process
(shared by every app session) and recomputes from the stored thumbnail, which is exactly the
model's input before normalisation. Requests and results are plain data (see requests.py), so
the same calls run in this process or on a Dask worker.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from vitscope import engine
from vitscope.analysis import probe
from vitscope.data.images import normalise
from vitscope.engine import prune
from vitscope.errors import StoreMismatch, VitscopeError, one_line
from vitscope.heads import Head, parse_heads, top_heads
from vitscope.models import ViTAdapter, load_model, weights_hash
from vitscope.service import newimage
from vitscope.service import requests as rq
from vitscope.store import open_store, read_layout
from vitscope.vocab import (
    ABLATION_MODES,
    CURVE_IMAGES,
    CURVE_ORDERS,
    PAIR_COUNT,
    PRUNABLE_TOL,
    WHOLE_HEAD,
    curve_order,
    curve_parts,
    head_name,
)

Progress = Callable[[int, int], None] | None
BASELINE_CACHE = 64  # images whose unpruned pass is kept (ViT-Ti: 3.6 MB each)
PASS_CACHE = 8  # images whose attention pass is kept, maps included (ViT-B: ~36 MB each)
GROUP = 32  # images per baseline pass of a pruning curve (bounds memory)
PRUNABLE_CHUNK = 8  # steps a set curve's prunable count computes per round beyond the curve's own
NEEDS_CLASSES = ("prune", "pairs", "curve", "saliency")  # requests answered in P[true]
NO_BASIS = ("unavailable: this store's model has no classifier and its images no usable labels, so P[true] and JSD "
            "are undefined (prob basis: none); its cls_dist and patch_dist are in the store")


@lru_cache(maxsize=4)
def _model(spec: str, pretrained: bool, checkpoint: str, device: str) -> ViTAdapter:
    return load_model(spec, pretrained=pretrained, checkpoint=checkpoint or None, device=device)


class Service:
    """Engine calls for one store's model and images."""

    def __init__(self, store_path: str | Path, device: str = "cpu") -> None:
        self.path = Path(store_path)
        self.ds = open_store(self.path)
        a = self.ds.attrs
        self.adapter = _model(a["model_spec"], bool(a.get("model_pretrained")), a.get("model_checkpoint", ""), device)
        built = json.loads(a["fingerprint"])["weights"]
        if weights_hash(self.adapter.model) != built:
            raise StoreMismatch(
                f"{self.path} was built with other weights of {a['model_spec']} than the ones loaded now: "
                "rebuild the store (vitscope build ... --overwrite)"
            )
        self.adapter = probe.from_store(self.adapter, self.path)  # a backbone: the head its store was built with
        self.prob_basis = probe.basis_of(self.adapter)
        self.data_config = json.loads(a["data_config"])
        self.images = self.ds.sizes["image"]
        self.class_names = [str(c) for c in self.ds["class_name"].values]
        self.labels = self.ds["label"].values
        self.valid = self.ds["valid"].values.astype(bool)
        self._bases: OrderedDict[int, prune.Baseline] = OrderedDict()
        self._passes: OrderedDict[int, prune.Pass] = OrderedDict()
        self._lock = threading.Lock()

    # -- images ---------------------------------------------------------------------------------------------

    def check_image(self, image: int) -> int:
        if not 0 <= int(image) < self.images:
            raise VitscopeError(
                f"image {image} out of range: {self.path} has {self.images} images (0..{self.images - 1})"
            )
        if not bool(self.valid[int(image)]):
            raise VitscopeError(f"image {image} ({self.ds['image_id'].values[int(image)]}) could not be read at build")
        return int(image)

    def input(self, image: int) -> torch.Tensor:
        """The model input [1,3,H,W] of a stored image, from its thumbnail."""
        thumb = self.ds["thumbnail"][self.check_image(image)].values[None]
        return normalise(thumb, self.data_config["mean"], self.data_config["std"])

    def inputs(self, images: Sequence[int]) -> torch.Tensor:
        idx = [self.check_image(i) for i in images]
        thumbs = self.ds["thumbnail"].isel(image=idx).values
        return normalise(thumbs, self.data_config["mean"], self.data_config["std"])

    def baseline(self, images: Sequence[int]) -> prune.Baseline:
        """The unpruned pass of stored images (kept for the last BASELINE_CACHE images), true labels."""
        with self._lock:  # the queue's two lanes share the cache
            for i in dict.fromkeys(images):  # an attention pass under way: finished, not run again
                if i not in self._bases and i in self._passes:
                    self._bases[i] = self._passes[i].baseline(torch.as_tensor(self.labels[[i]]))
            missing = [i for i in dict.fromkeys(images) if i not in self._bases]
            if missing:
                base = prune.baseline(self.adapter, self.inputs(missing), torch.as_tensor(self.labels[missing]))
                for r, i in enumerate(missing):  # copies: a view would keep the whole batch alive in the cache
                    self._bases[i] = prune.Baseline([x[r:r + 1].clone() for x in base.inputs],
                                                    [z[r:r + 1].clone() for z in base.outputs],
                                                    base.probs[r:r + 1].clone(), base.labels[r:r + 1].clone())
            parts = []
            for i in images:
                self._bases.move_to_end(i)
                parts.append(self._bases[i])
            _trim(self._bases, BASELINE_CACHE)
        if len(parts) == 1:
            return parts[0]
        return prune.Baseline([torch.cat(x) for x in zip(*(p.inputs for p in parts), strict=True)],
                              [torch.cat(z) for z in zip(*(p.outputs for p in parts), strict=True)],
                              torch.cat([p.probs for p in parts]), torch.cat([p.labels for p in parts]))

    # -- the computations (each returns plain data) ---------------------------------------------------------

    def attention(self, image: int, layer: int | None = None) -> np.ndarray:
        """All heads' attention of one image, [L, H, P, P] float32, or of one `layer`, [H, P, P]. The image's
        unpruned pass runs only as far as that layer and is kept (the last PASS_CACHE images): asking a deeper layer,
        or pruning the image, continues it; its end is the image's prune baseline (one forward, not two)."""
        image = self.check_image(int(image))
        L = self.adapter.num_layers
        if layer is not None and not 0 <= int(layer) < L:
            raise VitscopeError(f"layer {layer} out of range: this model has layers 0..{L - 1}")
        with self._lock:
            run = self._pass(image)
            if layer is None:
                run.to(L - 1)
            else:
                run.attend(int(layer))
            if run.done == L and image not in self._bases:
                self._keep(image, run.baseline(torch.as_tensor(self.labels[[image]])))
            if layer is None:
                return torch.stack(run.attention, 1)[0].numpy()
            return run.attention[int(layer)][0].numpy().copy()

    def _pass(self, image: int) -> prune.Pass:
        """The image's unpruned pass, as far as it has run (a new one if none is kept); under `_lock`."""
        run = self._passes.get(image)
        if run is None:
            run = self._passes[image] = prune.Pass(self.adapter, self.input(image))
        self._passes.move_to_end(image)
        _trim(self._passes, PASS_CACHE)
        return run

    def _keep(self, image: int, base: prune.Baseline) -> None:
        """Cache an image's unpruned pass for its prune requests; under `_lock`."""
        self._bases[image] = base
        self._bases.move_to_end(image)
        _trim(self._bases, BASELINE_CACHE)

    def ablate(self, image: int, layers=None, modes=ABLATION_MODES) -> engine.EngineResult:
        """The leave-one-out engine's metrics for one image (e.g. for modes or layers not in the store)."""
        label = torch.tensor([int(self.labels[self.check_image(image)])])
        return engine.run(self.adapter, self.input(image), label, layers=layers, modes=modes)

    def prune(self, requests: Sequence[dict]) -> list[dict]:
        """Prune requests ({"image", "heads"}) answered in as few forwards as their shapes allow."""
        parsed = [(self.check_image(r["image"]), parse_heads(r["heads"])) for r in requests]
        images = list(dict.fromkeys(i for i, _ in parsed))
        base = self.baseline(images)
        row = {i: r for r, i in enumerate(images)}
        results = prune.run_pruned(self.adapter, base, [(row[i], heads) for i, heads in parsed])
        return [self._prune_result(i, heads, res) for (i, heads), res in zip(parsed, results, strict=True)]

    def _prune_result(self, image: int, heads: list[Head], r: prune.PruneResult) -> dict:
        singles = self._stored_singles(image, heads)
        return {
            "kind": "prune", "image": image, "heads": [h.label for h in heads],
            "prob": r.prob, "baseline_prob": r.baseline_prob, "drop": r.drop, "jsd": r.jsd,
            "cls_dist": _finite(r.cls_dist), "patch_dist": _finite(r.patch_dist),
            "top5": [[self.class_names[c], p] for c, p in zip(r.top_idx, r.top_prob, strict=True)],
            "single_drops": singles, "sum_of_single_drops": None if singles is None else float(sum(singles)),
        }

    def _stored_singles(self, image: int, heads: list[Head]) -> list[float] | None:
        """Each head's own drop of P[true] in its mode, from the store (None when a head has a custom region)."""
        if any(not isinstance(h.mode, int) or h.mode == 0 for h in heads):
            return None
        imp = self.ds["importance"].isel(image=image).sel(metric="prob").load()  # [L, H, mode]
        base = float(self.ds["baseline_prob"][image])
        return [base - float(imp.isel(layer=h.layer, head=h.head).sel(mode=h.mode)) for h in heads]

    def top_heads(self, image: int, k: int) -> list[tuple[int, int]]:
        """The image's k heads (layer, head) whose whole-head pruning lowers P[true] most (from the store)."""
        prob = self.ds["importance"].isel(image=self.check_image(image)).sel(mode=WHOLE_HEAD, metric="prob")
        return [(h.layer, h.head) for h in top_heads(prob.values, k)]

    def pairs(self, image: int, k: int = PAIR_COUNT, heads: Sequence[object] | None = None,
              progress: Progress = None) -> dict:
        """Head-pair interactions Δ(i,j) − Δ(i) − Δ(j) of P[true] for the image's top-k heads (or `heads`, in any
        form `parse_head` reads; whole heads)."""
        image = self.check_image(image)
        if heads is None:
            if not 2 <= k <= self.adapter.num_layers * self.adapter.num_heads:
                raise VitscopeError(f"pairs need k in 2..{self.adapter.num_layers * self.adapter.num_heads}, got {k}")
            heads = self.top_heads(image, k)
        heads = [(h.layer, h.head) for h in parse_heads(heads)]
        prune.zero_masks(self.adapter, [Head(*h) for h in heads])  # one line for an unknown head
        single, pair = prune.pair_interactions(self.adapter, self.baseline([image]), 0, heads, progress)
        inter = pair - single[:, None] - single[None, :]
        inter.fill_diagonal_(0.0)
        return {"kind": "pairs", "image": image, "heads": [head_name(*h) for h in heads],
                "single": single.tolist(), "pair": pair.tolist(), "interaction": inter.tolist()}

    def curve(self, image: int | None = None, cls: int | None = None, orders: Sequence[str] = CURVE_ORDERS,
              steps: Sequence[int] | None = None, seed: int = 0, progress: Progress = None,
              max_images: int = CURVE_IMAGES, tol: float = PRUNABLE_TOL) -> dict:
        """Progressive pruning: heads pruned one after another in each order; P'[true] (one image) or top-1
        accuracy (a class, or every image; a seeded sample of `max_images` beyond that) against the number pruned.

        A set curve also says, per order, how many heads can go before top-1 drops by more than `tol`
        ("prunable": the first step whose accuracy is below the unpruned accuracy − tol, minus one; every head if
        none is), computed from every step up to that one whatever `steps` shows.
        """
        if self.prob_basis == "none":  # neither P'[true] nor top-1 is defined, whatever the order
            raise VitscopeError(NO_BASIS)
        ad = self.adapter
        n_heads = ad.num_layers * ad.num_heads
        names = list(dict.fromkeys(curve_order(o) for o in ([orders] if isinstance(orders, str) else orders)))
        if not names:
            raise VitscopeError(f"a pruning curve needs at least one order: {', '.join(CURVE_ORDERS)}")
        if not isinstance(tol, int | float) or not 0 <= tol < 1:
            raise VitscopeError(f"the prunable tolerance must be a number in [0, 1) (top-1 accuracy), got {tol!r}")
        if image is not None and cls is not None:
            raise VitscopeError("a pruning curve is for one image or one class, not both")
        if image is not None:
            scope = [self.check_image(image)]
        else:
            if cls is not None and not 0 <= int(cls) < len(self.class_names):
                raise VitscopeError(f"class {cls} out of range: 0..{len(self.class_names) - 1}")
            scope = np.flatnonzero(self.valid & (True if cls is None else self.labels == int(cls))).tolist()
            if not scope:
                raise VitscopeError(f"class {self.class_names[int(cls)]!r} has no readable image in {self.path}")
        total_images = len(scope)
        if len(scope) > max_images:  # a seeded sample keeps a curve over thousands of images interactive
            scope = sorted(np.random.default_rng(seed).choice(scope, max_images, replace=False).tolist())
        if steps is None:  # every step for one image of a small model; 25 steps for a set (one forward each)
            every = n_heads <= (150 if image is not None else 48)
            steps = list(range(n_heads + 1)) if every else sorted({round(v) for v in np.linspace(0, n_heads, 25)})
        steps = [int(s) for s in steps]
        if any(not 0 <= s <= n_heads for s in steps):
            raise VitscopeError(f"curve steps must be in 0..{n_heads} heads")
        ranked = {o: self._order(o, scope, seed) for o in names}
        tally = _Tally(progress, len(scope) * len(steps) * len(names))
        sums = self._prefix_sums(scope, ranked, {o: steps for o in names}, tally, image is not None)
        out = {"kind": "curve", "image": image, "cls": cls, "images": len(scope), "of": total_images, "steps": steps,
               "y": "prob" if image is not None else "top1",
               "curves": {o: (sums[o] / len(scope)).tolist() for o in names},
               "orders": {o: [head_name(*h) for h in r] for o, r in ranked.items()}}
        if image is None:
            known = {o: dict(zip(steps, sums[o].round().astype(int).tolist(), strict=True)) for o in names}
            out["prunable"] = self._prunable(scope, ranked, known, tol, tally)
            out["tol"] = float(tol)
            out["baseline"] = known[names[0]][0] / len(scope)
        return out

    def _prefix_sums(self, scope: list[int], ranked: dict[str, list[tuple[int, int]]], need: dict[str, list[int]],
                     tally: _Tally, image_curve: bool) -> dict[str, np.ndarray]:
        """Per order, the sum over `scope` of P'[true] (one image) or of top-1 correct at each of its needed steps;
        one baseline pass per group of images, shared by the orders (as are head sets two orders share)."""
        names = [o for o in need if need[o]]
        parts: dict[str, list[np.ndarray]] = {o: [] for o in names}
        units = sum(len(need[o]) for o in names)
        for g in range(0, len(scope), GROUP):
            group = scope[g:g + GROUP]
            base = prune.baseline(self.adapter, self.inputs(group), torch.as_tensor(self.labels[group]))
            at, size = tally.done, len(group) * units
            res = prune.prefixes(self.adapter, base, [ranked[o] for o in names], [need[o] for o in names],
                                 lambda d, t, at=at, size=size: tally.report(at + size * d / max(t, 1)))
            for o, (prob, correct) in zip(names, res, strict=True):
                parts[o].append((prob if image_curve else correct).sum(0).double().numpy())
            tally.report(at + size)
        return {o: np.sum(parts[o], axis=0) if o in parts else np.zeros(0) for o in need}

    def _prunable(self, scope: list[int], ranked: dict[str, list[tuple[int, int]]], known: dict[str, dict[int, int]],
                  tol: float, tally: _Tally) -> dict[str, int]:
        """Per order, heads pruned before top-1 falls below the unpruned top-1 − tol: the steps the curve lacks
        are computed PRUNABLE_CHUNK in the first round, twice as many in each next, in order, until the first such
        step (accuracy is not monotone)."""
        n_heads, m = self.adapter.num_layers * self.adapter.num_heads, len(scope)
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
            for o, c in self._prefix_sums(scope, ranked, need, tally, False).items():
                known[o] |= dict(zip(need[o], c.round().astype(int).tolist(), strict=True))

    def _order(self, order: str, scope: list[int], seed: int) -> list[tuple[int, int]]:
        """The heads in `order` (a canonical name): a stable sort of the store's per-head means over `scope`, so
        ties keep head order (layer, then head) in both directions."""
        L, H = self.adapter.num_layers, self.adapter.num_heads
        if order == "random":
            flat = np.random.default_rng(seed).permutation(L * H)
        else:
            criterion, direction = curve_parts(order)
            if criterion == "exact":  # P'[true] when pruned alone: low = harmful
                harm = -self.ds["importance"].isel(image=scope).sel(mode=WHOLE_HEAD, metric="prob").values
            else:  # the gradient proxy: large = harmful
                if "grad_importance" not in self.ds:
                    raise VitscopeError(f"{self.path} has no grad_importance: rebuild it for the proxy orders")
                harm = self.ds["grad_importance"].isel(image=scope).values
            harm = harm.astype(np.float64).mean(0).reshape(-1)
            if not np.isfinite(harm).all():
                raise VitscopeError(f"{self.path} has no finite {criterion} score for every head over these "
                                    "images: choose another order")
            flat = np.argsort(-harm if direction == "harmful-first" else harm, kind="stable")
        return [(int(j) // H, int(j) % H) for j in flat]

    def saliency(self, image: int, block: int = 1, progress: Progress = None) -> dict:
        """Patch-ablation saliency: the drop of P[true] when each block × block square is occluded."""
        image = self.check_image(image)
        drops = prune.patch_saliency(self.adapter, self.input(image)[0], int(self.labels[image]), block,
                                     progress=progress)
        return {"kind": "saliency", "image": image, "block": block, "baseline_prob": float(self.baseline([image])
                .probs[0, int(self.labels[image])]), "drops": drops.tolist()}

    def new_image(self, path: str | Path | None = None, data: bytes | None = None, label: int | None = None,
                  name: str | None = None) -> dict:
        """The full per-image analysis of an image not in the store (a file or its bytes), placed into the
        store's layouts."""
        name = name or (Path(path).name if path is not None else "upload")
        image = newimage.read_upload(path, data, name)
        return newimage.analyse(self.adapter, self.ds, read_layout(self.path), image, name, label)

    # -- plain-data entry points (both backends) ------------------------------------------------------------

    def compute(self, request: dict, progress: Progress = None) -> dict:
        """One request → its result; a user error comes back as {"error": one line}."""
        return self.compute_batch([request], progress)[0]

    def compute_batch(self, requests: Sequence[dict], progress: Progress = None) -> list[dict]:
        """Several requests; every prune request among them shares the forwards. Errors stay per request."""
        out: list[dict | None] = [None] * len(requests)
        prunes = []
        for n, r in enumerate(requests):
            try:
                kind = rq.check(r)
                if self.prob_basis == "none" and kind in NEEDS_CLASSES:
                    raise VitscopeError(NO_BASIS)
                if kind == "prune":
                    prune.zero_masks(self.adapter, parse_heads(r["heads"]))  # a bad head fails its request only
                    self.check_image(r["image"])
                    prunes.append(n)
                else:
                    out[n] = self._one(kind, r, progress)
            except (VitscopeError, torch.cuda.OutOfMemoryError, MemoryError) as e:
                out[n] = {"kind": r.get("kind") if isinstance(r, dict) else None, "error": _why(e)}
        if prunes:
            try:
                for n, res in zip(prunes, self.prune([requests[n] for n in prunes]), strict=True):
                    out[n] = res
            except (VitscopeError, torch.cuda.OutOfMemoryError, MemoryError) as e:
                for n in prunes:
                    out[n] = {"kind": "prune", "error": _why(e)}
        return out  # type: ignore[return-value]

    def _one(self, kind: str, r: dict, progress: Progress) -> dict:
        if kind == "pairs":
            return self.pairs(r["image"], r.get("k", PAIR_COUNT), r.get("heads"), progress)
        if kind == "curve":
            return self.curve(r.get("image"), r.get("cls"), r.get("orders", CURVE_ORDERS), r.get("steps"),
                              r.get("seed", 0), progress, r.get("max_images", CURVE_IMAGES),
                              r.get("tol", PRUNABLE_TOL))
        if kind == "saliency":
            return self.saliency(r["image"], r.get("block", 1), progress)
        if kind == "new_image":
            return self.new_image(r.get("path"), r.get("data"), r.get("label"), r.get("name"))
        if kind == "attention":
            return {"kind": "attention", "image": int(r["image"]), "layer": r.get("layer"),
                    "attention": self.attention(r["image"], r.get("layer"))}
        raise AssertionError(kind)


def _trim(cache: OrderedDict, size: int) -> None:
    """Drop the least recently used entries beyond `size`."""
    while len(cache) > size:
        cache.popitem(last=False)


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


def _finite(v: float) -> float | None:
    return None if v != v else v


def _why(e: BaseException) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError | MemoryError):
        return "out of memory: ask for fewer heads, steps or images at once, or use a larger device"
    return one_line(e)
