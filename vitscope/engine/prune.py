"""Any set of heads pruned together, each in its own mode or region; activation patching of heads; pairs,
progressive pruning, patch saliency.

Exact, like the leave-one-out engine: one baseline pass caches each block's input, and a request
(an image and the heads it prunes) runs again only from its lowest pruned layer, many requests
per forward (one sequence each). Layers no request of a batch prunes run timm's own blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vitscope.engine.explain import occluded_probs
from vitscope.engine.metrics import importance_metrics, jsd, region_mask
from vitscope.errors import VitscopeError
from vitscope.heads import Head, Rect, Region, parse_head
from vitscope.models.adapter import AttentionParts, ViTAdapter, merge_heads
from vitscope.vocab import MODES, WHOLE_HEAD, head_name

# Heads are vitscope.heads values; HeadPrune and parse_prune are their names here from before that module.
HeadPrune = Head
parse_prune = parse_head


@dataclass
class PruneResult:
    """One request's outcome; the distances are NaN unless every pruned head is in one layer."""

    prob: float  # P'[true]
    baseline_prob: float  # P[true]
    jsd: float
    cls_dist: float
    patch_dist: float
    top_idx: list[int]
    top_prob: list[float]
    source_prob: float | None = None  # P'[the source's true] (a patch request; None for a prune request)

    @property
    def drop(self) -> float:
        return self.baseline_prob - self.prob


def _rect_tokens(rect: Rect | None, grid: int, what: str) -> Tensor:
    if rect is None:
        return torch.ones(grid, grid, dtype=torch.bool)
    r0, c0, r1, c1 = (int(v) for v in rect)
    if not (0 <= r0 < r1 <= grid and 0 <= c0 < c1 <= grid):
        raise VitscopeError(f"{what} rectangle {tuple(rect)} is empty or outside the {grid}×{grid} patch grid: "
                            f"give (row0, col0, row1, col1) with 0 ≤ row0 < row1 ≤ {grid}, same for columns")
    out = torch.zeros(grid, grid, dtype=torch.bool)
    out[r0:r1, c0:c1] = True
    return out


def region_zero(region: Region, grid: int, num_prefix: int) -> Tensor:
    """Boolean [P,P] mask of the entries of A that `region` sets to 0."""
    n, P = num_prefix, num_prefix + grid * grid
    zero = torch.zeros(P, P, dtype=torch.bool)
    if region.source is not None or region.target is not None:
        rows = _rect_tokens(region.source, grid, "source").flatten()
        cols = _rect_tokens(region.target, grid, "target").flatten()
        zero[n:, n:] = rows[:, None] & cols[None, :]
    if region.cls_rows:
        zero[:n] = True
    if region.cls_cols:
        zero[:, :n] = True
    if not zero.any():
        raise VitscopeError("empty region: give a source or target rectangle, or CLS rows or columns")
    return zero


def zero_masks(adapter: ViTAdapter, heads: Sequence[Head]) -> dict[int, Tensor]:
    """{layer: bool [H,P,P]} of the attention entries the listed heads zero (a head listed twice: the union)."""
    L, H, P = adapter.num_layers, adapter.num_heads, adapter.num_tokens
    out: dict[int, Tensor] = {}
    for hp in heads:
        if not (0 <= hp.layer < L and 0 <= hp.head < H):
            raise VitscopeError(f"unknown head {head_name(hp.layer, hp.head)}: this model has layers 0..{L - 1} "
                                f"and heads 0..{H - 1}")
        if isinstance(hp.mode, Region):
            zero = region_zero(hp.mode, adapter.grid, adapter.num_prefix)
        elif hp.mode in MODES:
            zero = region_mask(hp.mode, P, adapter.num_prefix)
        else:
            raise VitscopeError(f"{head_name(hp.layer, hp.head)}: pruning mode {hp.mode} out of range: "
                                f"modes are {MODES[0]}..{MODES[-1]} ({WHOLE_HEAD} = whole head)")
        layer = out.setdefault(hp.layer, torch.zeros(H, P, P, dtype=torch.bool))
        layer[hp.head] |= zero
    return out


@dataclass
class Baseline:
    """The unpruned pass of a batch of images: each block's input and attention output, and P."""

    inputs: list[Tensor]  # per layer [B, P, D]
    outputs: list[Tensor]  # per layer z [B, P, D]
    probs: Tensor  # [B, C]
    labels: Tensor  # [B]


class Pass:
    """The unpruned pass of a batch of images, run block by block only as far as asked: the app shows one head's
    attention, so an image change computes the blocks before that head's layer and the layer's attention alone (a
    twelfth of ViT-B's forward for layer 0), and a later ask or `baseline` continues from there instead of starting
    again."""

    def __init__(self, adapter: ViTAdapter, images: Tensor, keep_attention: bool = True) -> None:
        self.adapter, self.keep_attention = adapter, keep_attention
        with torch.inference_mode():
            self.x = adapter.embed(images.to(adapter.device, adapter.dtype))  # the next block's input
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.attention: list[Tensor] = []  # per layer attended [B, H, P, P] float32 on the CPU (when kept)
        self._open: AttentionParts | None = None  # the attention of block `done`, the rest of that block not yet run

    @property
    def done(self) -> int:
        """Blocks computed so far."""
        return len(self.inputs)

    def _attend(self) -> AttentionParts:
        """The attention of block `done` (computed once)."""
        if self._open is None:
            self._open = self.adapter.attention(self.done, self.x)
            if self.keep_attention:
                self.attention.append(self._open.attn.float().cpu())
        return self._open

    @torch.inference_mode()
    def to(self, layer: int) -> None:
        """Compute the blocks up to and including `layer`."""
        a = self.adapter
        for i in range(self.done, layer + 1):
            parts = self._attend()
            self._open = None
            z = a.project(i, merge_heads(parts.attn @ parts.v), parts.gate)
            self.inputs.append(self.x)
            self.outputs.append(z)
            self.x = a.finish_block(i, self.x, z)

    @torch.inference_mode()
    def attend(self, layer: int) -> None:
        """The attention of every layer up to `layer` (in `attention` when kept): the blocks before it, and of block
        `layer` only its attention (its values, projection and MLP, ~3/4 of a ViT block, wait for `to`)."""
        self.to(layer - 1)
        if self.done == layer:
            self._attend()

    @torch.inference_mode()
    def baseline(self, labels: Tensor | None = None) -> Baseline:
        """Finish the pass: every block, then P (labels: the true ones; None = the prediction)."""
        self.to(self.adapter.num_layers - 1)
        probs = self.adapter.head(self.x).float().softmax(-1)
        labels = probs.argmax(-1) if labels is None else torch.as_tensor(labels, device=probs.device).long().view(-1)
        if labels.shape != probs.shape[:1] or labels.min() < 0 or labels.max() >= probs.shape[-1]:
            raise VitscopeError(f"labels must be {probs.shape[0]} class indices in 0..{probs.shape[-1] - 1}")
        return Baseline(self.inputs, self.outputs, probs, labels)


def baseline(adapter: ViTAdapter, images: Tensor, labels: Tensor | None = None,
             attention: list[Tensor] | None = None) -> Baseline:
    """One forward of `images` [B,3,h,w] (preprocessed) keeping what pruned passes restart from; with a list as
    `attention`, each layer's attention [B, H, P, P] (float32, on the CPU) is appended to it on the way."""
    run = Pass(adapter, images, keep_attention=attention is not None)
    base = run.baseline(labels)
    if attention is not None:
        attention.extend(run.attention)
    return base


@torch.inference_mode()
def run_pruned(
    adapter: ViTAdapter,
    base: Baseline,
    requests: Sequence[tuple[int, Sequence[Head]]],
    *,
    topk: int = 5,
    max_batch: int = 64,
    progress: Callable[[int, int], None] | None = None,
    sources: Sequence[int | None] | None = None,
) -> list[PruneResult]:
    """Each request (image row in `base`, heads pruned together) → PruneResult, in order.

    An empty head list is the unpruned model. `progress(done, total)` is called after each forward. `sources[r]`,
    where not None, makes request r a patch: each of its (whole) heads outputs what it output on that row's unpruned
    pass instead of its own A·V, and the result carries `source_prob`.
    """
    rows = [int(b) for b, _ in requests]
    srcs = [None] * len(requests) if sources is None else [None if s is None else int(s) for s in sources]
    B = base.probs.shape[0]
    if len(srcs) != len(rows) or any(not 0 <= b < B for b in rows + [s for s in srcs if s is not None]):
        raise VitscopeError(f"image rows must be in 0..{B - 1}, one source (or None) per request")
    results: list[PruneResult | None] = [None] * len(requests)
    outputs: dict[tuple[int, int], Tensor] = {}  # (source row, layer) → its heads' outputs, shared by requests
    # Requests with the same lowest layer share the most work: batch them together. Each batch builds its own
    # masks (a request's are up to L × [H,P,P] bools: thousands of a pruning curve's would not fit in memory).
    order = sorted(range(len(requests)), key=lambda r: min((h.layer for h in requests[r][1]),
                                                            default=adapter.num_layers))
    for start in range(0, len(order), max_batch):
        chunk = order[start:start + max_batch]
        masks = [zero_masks(adapter, requests[r][1]) for r in chunk]
        adds = [{} if srcs[r] is None else patch_outputs(adapter, base, srcs[r], requests[r][1], outputs)
                for r in chunk]
        got = _forward(adapter, base, [rows[r] for r in chunk], masks, topk, adds, [srcs[r] for r in chunk])
        for r, res in zip(chunk, got, strict=True):
            results[r] = res
        if progress is not None:
            progress(min(start + max_batch, len(order)), len(order))
    return results  # type: ignore[return-value]


def patch_outputs(adapter: ViTAdapter, base: Baseline, source: int, heads: Sequence[Head],
                  cache: dict[tuple[int, int], Tensor]) -> dict[int, tuple[list[int], Tensor]]:
    """{layer: (patched heads, the source row's A·V [H,P,dh] at that layer)} of one patch request.

    The source's outputs come from its own unpruned pass (standard activation patching: a patched head upstream
    does not change what a later head is patched with); `cache` keeps them per (source, layer)."""
    out: dict[int, tuple[list[int], Tensor]] = {}
    for h in heads:
        if h.mode != WHOLE_HEAD:
            raise VitscopeError(f"{h.label}: patching replaces a head's whole output, so it takes no mode or "
                                f"region: give {h.layer}:{h.head}")
        if (source, h.layer) not in cache:
            parts = adapter.attention(h.layer, base.inputs[h.layer][source:source + 1])
            cache[source, h.layer] = (parts.attn @ parts.v)[0]
        patched = out.setdefault(h.layer, ([], cache[source, h.layer]))[0]
        if h.head not in patched:  # a head listed twice is patched once
            patched.append(h.head)
    return out


def _forward(adapter: ViTAdapter, base: Baseline, rows: list[int], masks: list[dict[int, Tensor]], topk: int,
             adds: list[dict[int, tuple[list[int], Tensor]]], sources: list[int | None]) -> list[PruneResult]:
    L, dev, n = adapter.num_layers, base.probs.device, adapter.num_prefix
    b = torch.tensor(rows, device=dev)
    layers = sorted({i for m in masks for i in m})
    single = [next(iter(m)) if len(m) == 1 else None for m in masks]
    z_new: dict[int, Tensor] = {}  # request position → its one pruned layer's pruned output
    if not layers:
        p_new = base.probs[b]
    else:
        x = base.inputs[layers[0]][b]
        for i in range(layers[0], L):
            if i > layers[-1]:
                x = adapter.run_blocks(x, i)
                break
            if i not in layers:
                x = adapter.blocks[i](x)
                continue
            keep = torch.ones(len(rows), adapter.num_heads, adapter.num_tokens, adapter.num_tokens, device=dev,
                              dtype=x.dtype)
            for r, m in enumerate(masks):
                if i in m:
                    keep[r].masked_fill_(m[i].to(dev), 0.0)
            parts = adapter.attention(i, x)
            o = (parts.attn * keep) @ parts.v
            for r, add in enumerate(adds):  # a patched head's attention is zeroed whole: its output is the source's
                if i in add:
                    o[r, add[i][0]] += add[i][1][add[i][0]]
            z = adapter.project(i, merge_heads(o), parts.gate)
            z_new |= {r: z[r] for r in range(len(rows)) if single[r] == i}
            x = adapter.finish_block(i, x, z)
        p_new = adapter.head(x.float()).float().softmax(-1)
    p, labels = base.probs[b], base.labels[b]
    prob, div = p_new.gather(-1, labels[:, None])[:, 0], jsd(p, p_new)
    src_labels = base.labels[[row if s is None else s for row, s in zip(rows, sources, strict=True)]]
    src_prob = p_new.gather(-1, src_labels[:, None])[:, 0]
    top = p_new.topk(min(topk, p_new.shape[-1]), dim=-1)
    out = []
    for r in range(len(rows)):
        dist = [float("nan")] * 2
        if r in z_new:
            i = single[r]
            zb = base.outputs[i][b[r]]
            dist = importance_metrics(p[r], p_new[r], labels[r], zb, z_new[r], n)[2:].tolist()
        elif not masks[r]:
            dist = [0.0, 0.0]
        out.append(PruneResult(
            prob=float(prob[r]), baseline_prob=float(p[r, labels[r]]), jsd=float(div[r]),
            cls_dist=dist[0], patch_dist=dist[1], top_idx=top.indices[r].tolist(), top_prob=top.values[r].tolist(),
            source_prob=None if sources[r] is None else float(src_prob[r]),
        ))
    return out


def pair_interactions(adapter: ViTAdapter, base: Baseline, row: int, heads: Sequence[Head],
                      progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor]:
    """(single drops [k], pair drops [k,k]) of P[true] for the listed heads, each in its mode.

    interaction(i, j) = pair[i, j] − single[i] − single[j]; the diagonal of `pair` is the single drop.
    """
    k = len(heads)
    hp = list(heads)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    reqs = [(row, [h]) for h in hp] + [(row, [hp[i], hp[j]]) for i, j in pairs]
    res = run_pruned(adapter, base, reqs, progress=progress)
    single = torch.tensor([r.drop for r in res[:k]])
    pair = torch.diag(single)
    for (i, j), r in zip(pairs, res[k:], strict=True):
        pair[i, j] = pair[j, i] = r.drop
    return single, pair


def prefixes(adapter: ViTAdapter, base: Baseline, orders: Sequence[Sequence[tuple[int, int]]],
             steps: Sequence[Sequence[int]], progress: Callable[[int, int], None] | None = None
             ) -> list[tuple[Tensor, Tensor]]:
    """Progressive pruning in several orders at once: the first n heads of order k pruned together, for each n in
    `steps[k]`, on every image of `base`, in one batched run; a head set that several orders prune at some step
    (none, all, a shared prefix) is computed once per image.

    Returns per order (P'[true] [B, S_k], top-1 correct [B, S_k] bool).
    """
    B = base.probs.shape[0]
    key: dict[tuple[int, frozenset], int] = {}  # (image row, head set) → its request
    reqs: list[tuple[int, list[Head]]] = []
    where: list[list[int]] = []  # per order, its requests in (image, step) order
    for order, ns in zip(orders, steps, strict=True):
        hp = [Head(layer, head) for layer, head in order]
        idx = []
        for b in range(B):
            for n in ns:
                k = (b, frozenset(order[:n]))
                if k not in key:
                    key[k] = len(reqs)
                    reqs.append((b, hp[:n]))
                idx.append(key[k])
        where.append(idx)
    res = run_pruned(adapter, base, reqs, topk=1, progress=progress)
    prob = torch.tensor([r.prob for r in res])
    correct = torch.tensor([r.top_idx[0] for r in res]) == base.labels.cpu()[[b for b, _ in reqs]]
    return [(prob[idx].view(B, len(ns)), correct[idx].view(B, len(ns)))
            for idx, ns in zip(where, steps, strict=True)]


@torch.inference_mode()
def patch_saliency(adapter: ViTAdapter, image: Tensor, label: int, block: int = 1, max_batch: int = 64,
                   progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Drop of P[true] when each block × block square of patches is occluded at the input → [g/block, g/block].

    Occluded pixels are set to 0 after normalisation (the data config's mean colour), so a patch keeps
    its position embedding and loses its content: the patch token becomes the embedding of a plain patch.
    """
    g = adapter.grid
    if block < 1 or g % block:
        raise VitscopeError(f"saliency block {block} must divide the {g}×{g} patch grid")
    s = g // block
    cells = torch.eye(s * s, dtype=torch.bool).view(s * s, s, s)  # one block × block square each
    masks = cells.repeat_interleave(block, 1).repeat_interleave(block, 2).view(s * s, g * g)
    p0 = occluded_probs(adapter, image, label, torch.zeros(1, g * g, dtype=torch.bool))[0]
    return (p0 - occluded_probs(adapter, image, label, masks, max_batch, progress)).view(s, s)
