"""On-demand engine work for one store: attention, heads pruned or patched together, pairs, pruning curves, saliency.

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

from vitscope.analysis import probe
from vitscope.engine import prune
from vitscope.errors import StoreMismatch, VitscopeError, one_line
from vitscope.heads import Head, parse_heads, parse_patch_heads, prune_answer, top_heads
from vitscope.imagesets.folders import normalise
from vitscope.models import ViTAdapter, load_model, weights_hash
from vitscope.service import curves, effects, explain, newimage
from vitscope.service import requests as rq
from vitscope.store import check_image, open_store, read_probe, read_shape
from vitscope.vocab import (
    CURVE_IMAGES,
    CURVE_ORDERS,
    NO_BASIS,
    PAIR_COUNT,
    PRUNABLE_TOL,
    WHOLE_HEAD,
)

Progress = Callable[[int, int], None] | None
BASELINE_CACHE = 64  # images whose unpruned pass is kept (ViT-Ti: 3.6 MB each)
PASS_CACHE = 8  # images whose attention pass is kept, maps included (ViT-B: ~36 MB each)


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
        # a backbone: the head its store was built with
        self.adapter = probe.with_stored_head(self.adapter, *read_probe(self.path))
        self.prob_basis = probe.basis_of(self.adapter)
        self.data_config = json.loads(a["data_config"])
        self.images = self.ds.sizes["image"]
        self.class_names = [str(c) for c in self.ds["class_name"].values]
        self.labels = self.ds["label"].values
        self.valid = self.ds["valid"].values.astype(bool)
        self.image_ids = self.ds["image_id"].values
        self._bases: OrderedDict[int, prune.Baseline] = OrderedDict()
        self._passes: OrderedDict[int, prune.Pass] = OrderedDict()
        self._lock = threading.Lock()

    # -- images ---------------------------------------------------------------------------------------------

    def check_image(self, image: int) -> int:
        """`image` if it is in the store and was readable at build; else one line saying which it is not."""
        return check_image(self.path, image, self.valid, self.image_ids)

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

    def prune(self, requests: Sequence[dict]) -> list[dict]:
        """Prune requests ({"image", "heads"}) answered in as few forwards as their shapes allow."""
        return self._prune([(self.check_image(r["image"]), parse_heads(r["heads"])) for r in requests])

    def _prune(self, parsed: Sequence[tuple[int, list[Head]]], sources: Sequence[int | None] | None = None
               ) -> list[dict]:
        """Prune requests as (checked image, its heads), answered together; where `sources` gives a (checked) image,
        that request patches its heads from it instead. One baseline holds every image and every source."""
        sources = [None] * len(parsed) if sources is None else list(sources)
        images = list(dict.fromkeys([i for i, _ in parsed] + [s for s in sources if s is not None]))
        base = self.baseline(images)
        row = {i: r for r, i in enumerate(images)}
        results = prune.run_pruned(self.adapter, base, [(row[i], heads) for i, heads in parsed],
                                   sources=[None if s is None else row[s] for s in sources])
        return [self._prune_result(i, heads, res) if s is None else
                self._patch_result(i, s, heads, res, base.probs[[row[i], row[s]], base.labels[row[s]]].tolist())
                for (i, heads), s, res in zip(parsed, sources, results, strict=True)]

    def _prune_result(self, image: int, heads: list[Head], r: prune.PruneResult) -> dict:
        top5 = [[self.class_names[c], p] for c, p in zip(r.top_idx, r.top_prob, strict=True)]
        return prune_answer(image, heads, r.prob, r.baseline_prob, r.jsd, _finite(r.cls_dist), _finite(r.patch_dist),
                            top5, self._stored_singles(image, heads))

    def _patch_result(self, image: int, source: int, heads: list[Head], r: prune.PruneResult,
                      source_label_probs: list[float]) -> dict:
        """`source_label_probs`: P[the source's label] unpatched on the image, and on the source itself."""
        return {"kind": "patch", "image": image, "source": source, "heads": list(dict.fromkeys(h.name for h in heads)),
                "prob": r.prob, "baseline_prob": r.baseline_prob, "source_prob": r.source_prob,
                "source_prob_before": source_label_probs[0], "source_baseline_prob": source_label_probs[1],
                "label": int(self.labels[image]),
                "source_label": int(self.labels[source]), "topk_idx": r.top_idx, "topk_prob": r.top_prob}

    def _stored_singles(self, image: int, heads: list[Head]) -> list[float] | None:
        """Each head's own drop of P[true] in its mode, from the store (None when a head has a custom region)."""
        if any(not isinstance(h.mode, int) or h.mode == 0 for h in heads):
            return None
        imp = self.ds["importance"].isel(image=image).sel(metric="prob").load()  # [L, H, mode]
        base = float(self.ds["baseline_prob"][image])
        return [base - float(imp.isel(layer=h.layer, head=h.head).sel(mode=h.mode)) for h in heads]

    def top_heads(self, image: int, k: int) -> list[Head]:
        """The image's k heads whose whole-head pruning lowers P[true] most (from the store)."""
        prob = self.ds["importance"].isel(image=self.check_image(image)).sel(mode=WHOLE_HEAD, metric="prob")
        return top_heads(prob.values, k)

    def pairs(self, image: int, k: int = PAIR_COUNT, heads: Sequence[object] | None = None,
              progress: Progress = None) -> dict:
        """Head-pair interactions Δ(i,j) − Δ(i) − Δ(j) of P[true] for the image's top-k heads (or `heads`, in any
        form `parse_head` reads; whole heads)."""
        image = self.check_image(image)
        if heads is None:
            if not 2 <= k <= self.adapter.num_layers * self.adapter.num_heads:
                raise VitscopeError(f"pairs need k in 2..{self.adapter.num_layers * self.adapter.num_heads}, got {k}")
            chosen = self.top_heads(image, k)
        else:
            chosen = [Head(h.layer, h.head) for h in parse_heads(heads)]
        prune.zero_masks(self.adapter, chosen)  # one line for an unknown head
        single, pair = prune.pair_interactions(self.adapter, self.baseline([image]), 0, chosen, progress)
        inter = pair - single[:, None] - single[None, :]
        inter.fill_diagonal_(0.0)
        return {"kind": "pairs", "image": image, "heads": [h.name for h in chosen],
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
        return curves.curve(self, image, cls, orders, steps, seed, progress, max_images, tol)

    def saliency(self, image: int, block: int = 1, progress: Progress = None) -> dict:
        """Patch-ablation saliency: the drop of P[true] when each block × block square is occluded."""
        image = self.check_image(image)
        drops = prune.patch_saliency(self.adapter, self.input(image)[0], int(self.labels[image]), block,
                                     progress=progress)
        return {"kind": "saliency", "image": image, "block": block, "baseline_prob": float(self.baseline([image])
                .probs[0, int(self.labels[image])]), "drops": drops.tolist()}

    def explain(self, image: int, methods: Sequence[str] | None = None, progress: Progress = None) -> dict:
        """One image's patch maps (default: all four), their faithfulness curves and AUCs (`service/explain.py`)."""
        return explain.explain(self, image, methods, progress)

    def explain_set(self, count: int, cls: int | None = None, seed: int = 0, methods: Sequence[str] | None = None,
                    progress: Progress = None) -> dict:
        """The faithfulness benchmark over a seeded sample of `count` images (of class `cls`)."""
        return explain.explain_set(self, count, cls, seed, methods, progress)

    def new_image(self, path: str | Path | None = None, data: bytes | None = None, label: int | None = None,
                  name: str | None = None) -> dict:
        """The full per-image analysis of an image not in the store (a file or its bytes), placed into the
        store's layouts."""
        name = name or (Path(path).name if path is not None else "upload")
        image = newimage.read_upload(path, data, name)
        return newimage.analyse(self.adapter, self.ds, read_shape(self.path), image, name, label)

    # -- plain-data entry points (both backends) ------------------------------------------------------------

    def compute(self, request: dict, progress: Progress = None) -> dict:
        """One request → its result; a user error comes back as {"error": one line}."""
        return self.compute_batch([request], progress)[0]

    def compute_batch(self, requests: Sequence[dict], progress: Progress = None) -> list[dict]:
        """Several requests; every prune and patch request among them shares the forwards. Errors stay per request."""
        out: list[dict | None] = [None] * len(requests)
        # request → (image, heads, patch source or None), parsed and checked once
        prunes: dict[int, tuple[int, list[Head], int | None]] = {}
        for n, r in enumerate(requests):
            try:
                kind = rq.check(r)
                if self.prob_basis == NO_BASIS and kind in rq.NEEDS_CLASSES:
                    raise VitscopeError(rq.NO_BASIS_WHY)
                if kind in ("prune", "patch"):
                    heads = parse_heads(r["heads"]) if kind == "prune" else parse_patch_heads(r["heads"])
                    prune.zero_masks(self.adapter, heads)  # a bad head fails its request only
                    source = self.check_image(r["source"]) if kind == "patch" else None
                    prunes[n] = (self.check_image(r["image"]), heads, source)
                else:
                    out[n] = self._one(kind, r, progress)
            except (VitscopeError, torch.cuda.OutOfMemoryError, MemoryError) as e:
                out[n] = {"kind": r.get("kind") if isinstance(r, dict) else None, "error": _why(e)}
        if prunes:
            try:
                parsed = [(i, heads) for i, heads, _ in prunes.values()]
                answers = self._prune(parsed, [s for _, _, s in prunes.values()])
                for n, res in zip(prunes, answers, strict=True):
                    out[n] = res
            except (VitscopeError, torch.cuda.OutOfMemoryError, MemoryError) as e:
                for n in prunes:
                    out[n] = {"kind": requests[n]["kind"], "error": _why(e)}
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
        if kind == "effects":
            return effects.effects(self, r["image"])
        if kind == "explain":
            return {"kind": "explain", **self.explain(r["image"], r.get("methods"), progress)}
        if kind == "explain_set":
            return {"kind": "explain_set", **self.explain_set(r["images"], r.get("cls"), r.get("seed", 0),
                                                             r.get("methods"), progress)}
        if kind == "attention":
            return {"kind": "attention", "image": int(r["image"]), "layer": r.get("layer"),
                    "attention": self.attention(r["image"], r.get("layer"))}
        raise AssertionError(kind)


def _trim(cache: OrderedDict, size: int) -> None:
    """Drop the least recently used entries beyond `size`."""
    while len(cache) > size:
        cache.popitem(last=False)


def _finite(v: float) -> float | None:
    return None if v != v else v


def _why(e: BaseException) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError | MemoryError):
        return "out of memory: ask for fewer heads, steps or images at once, or use a larger device"
    return one_line(e)
