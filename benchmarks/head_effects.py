"""Heads across layers on a store's model and images: which heads write the answer directly and which act through
later heads, where the most important head's effect goes, and which cheap proxy ranks heads like exact pruning.

    python benchmarks/head_effects.py cache/vit_tiny_in200.zarr [--images 200] [--head L:H]

Prints (the evidence of docs/models.md, "Heads across layers"):
- per layer, the mean over images of the heads' summed direct and total effects (logits), and the heads with the
  largest mean total effect with their direct share;
- for the head with the largest mean total effect (or --head): where its effect reaches the logit, from the label
  logit's decomposition without and with the head (`engine.effects.decompose(pruned=…)`, the unpruned run's norm
  scale): the change of every later layer's heads' and MLP's terms, and of the norm's scale; then activation
  patching layer by layer: with the head pruned, each later layer's attention output (all its heads) or MLP output
  patched back from the clean run, and the share of the head's total effect that restores (timm hooks);
- the proxy table (`analysis.proxy`), whole store.
Needs a v5 store whose images are all analysed (its layouts may still be coming) and its model, loaded as the store
records it. Not a test.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from vitscope import store
from vitscope.analysis.proxy import proxy_table, table_lines
from vitscope.engine.effects import decompose
from vitscope.heads import parse_head
from vitscope.imagesets.folders import normalise
from vitscope.models import load_model
from vitscope.vocab import head_name


class Stored:
    """A store's images and its model, as the service has them, from a store whose layouts may still be coming."""

    def __init__(self, path: str) -> None:
        if not store.done_chunks(path).all():
            raise SystemExit(f"{path}: not every image is analysed yet (run its build to the end of the images)")
        self.ds = ds = store.open_dataset(path, fresh=True)
        a = ds.attrs
        self.adapter = load_model(a["model_spec"], checkpoint=a.get("model_checkpoint") or None)
        self.labels, self.valid = ds["label"].values, ds["valid"].values.astype(bool)
        self.config = json.loads(a["data_config"])

    def inputs(self, images: list[int]) -> torch.Tensor:
        return normalise(self.ds["thumbnail"].isel(image=images).values, self.config["mean"], self.config["std"])


def layer_table(ds, images: np.ndarray) -> list[str]:
    direct, total = (ds[k].values[images] for k in ("direct_effect", "total_effect"))
    lines = ["layer   Σ direct   Σ total   (mean over images of the layer's heads summed, logits)"]
    lines += [f"{i:>5} {direct[:, i].sum(-1).mean():+9.3f} {total[:, i].sum(-1).mean():+9.3f}"
              for i in range(direct.shape[1])]
    md, mt = direct.mean(0), total.mean(0)
    H = md.shape[1]
    lines.append("largest mean total effects (direct share = mean direct / mean total):")
    lines += [f"  {head_name(*divmod(int(k), H))}: total {mt.flat[k]:+.3f}, direct {md.flat[k]:+.3f} "
              f"({md.flat[k] / mt.flat[k]:+.0%})" for k in np.argsort(-mt.ravel())[:6]]
    lines.append("largest mean direct effects:")
    lines += [f"  {head_name(*divmod(int(k), H))}: direct {md.flat[k]:+.3f}, total {mt.flat[k]:+.3f}"
              for k in np.argsort(-np.abs(md).ravel())[:6]]
    return lines


def flow(svc: Stored, images: np.ndarray, layer: int, head: int, batch: int = 25) -> list[str]:
    """Where the head's total effect reaches the logit, layer by layer (mean over images, logits)."""
    L = svc.adapter.num_layers
    heads, mlps, scale, own, totals = [], [], [], [], []
    for start in range(0, len(images), batch):
        idx = images[start:start + batch].tolist()
        x, y = svc.inputs(idx), torch.as_tensor(svc.labels[idx])
        clean, gone = decompose(svc.adapter, x, y), decompose(svc.adapter, x, y, pruned=[(layer, head)])
        d = clean.direct - gone.direct
        own.append(d[:, layer, head].clone())
        d[:, layer, head] = 0
        heads.append(d.sum(-1))
        mlps.append(clean.mlp - gone.mlp)
        scale.append((clean.bias - gone.bias) + (clean.embed - gone.embed) - (gone.logit - gone.total()))
        totals.append(clean.logit - gone.logit)
    heads, mlps = torch.cat(heads).mean(0), torch.cat(mlps).mean(0)
    total = float(torch.cat(totals).mean())
    lines = [f"{head_name(layer, head)}: mean total effect {total:+.3f} over {len(images)} images; where it reaches "
             f"the logit (mean change of each term when it is pruned):",
             f"  its own direct effect {float(torch.cat(own).mean()):+.3f}; the norm's scale and constants "
             f"{float(torch.cat(scale).mean()):+.3f}",
             "  layer  heads' terms   MLP's term"]
    lines += [f"  {i:>5} {float(heads[i]):+12.3f} {float(mlps[i]):+12.3f}" for i in range(layer, L)]
    return lines


def restored(svc: Stored, images: np.ndarray, layer: int, head: int, batch: int = 25) -> list[str]:
    """Activation patching layer by layer: the head pruned, one later layer's attention or MLP output patched back
    from the clean run; the share of the head's total effect that comes back (mean over images of the logits)."""
    model, dh = svc.adapter.model, svc.adapter.head_dim
    L = svc.adapter.num_layers

    def run(x, y, prune: bool, restore: tuple[str, int] | None, clean: dict) -> tuple[torch.Tensor, dict]:
        seen, hooks = {}, []
        if prune:
            def zero(m, a):
                t = a[0].clone()
                t[..., head * dh:(head + 1) * dh] = 0
                return (t,)
            hooks.append(model.blocks[layer].attn.proj.register_forward_pre_hook(zero))
        for i, blk in enumerate(model.blocks):
            for part in ("attn", "mlp"):
                def keep(m, a, out, key=(part, i)):
                    seen[key] = out
                    return clean[key] if key == restore else None
                hooks.append(getattr(blk, part).register_forward_hook(keep))
        try:
            with torch.inference_mode():
                s = model(x).double().gather(1, y[:, None])[:, 0]
        finally:
            for h in hooks:
                h.remove()
        return s, seen

    parts = [(p, i) for i in range(layer + 1, L) for p in ("attn", "mlp")]
    got = {k: [] for k in parts}
    base, pruned = [], []
    for start in range(0, len(images), batch):
        idx = images[start:start + batch].tolist()
        x, y = svc.inputs(idx), torch.as_tensor(svc.labels[idx]).long()
        s0, clean = run(x, y, False, None, {})
        s1, _ = run(x, y, True, None, clean)
        base.append(s0)
        pruned.append(s1)
        for k in parts:
            got[k].append(run(x, y, True, k, clean)[0])
    s0, s1 = torch.cat(base), torch.cat(pruned)
    lost = float((s0 - s1).mean())
    lines = [f"{head_name(layer, head)} pruned ({lost:+.3f} logits), one later layer patched back from the clean run: "
             "the share of the loss restored", "  layer  attention    MLP"]
    for i in range(layer + 1, L):
        share = [float((torch.cat(got[p, i]) - s1).mean()) / lost for p in ("attn", "mlp")]
        lines.append(f"  {i:>5} {share[0]:+9.0%} {share[1]:+8.0%}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--images", type=int, default=None, help="the first N readable images (default all)")
    ap.add_argument("--head", default=None, help="L:H to follow (default: the largest mean total effect)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    svc = Stored(args.store)
    ds = svc.ds
    images = np.flatnonzero(svc.valid)[:args.images]
    print(f"{args.store}: {svc.adapter.spec}, {len(images)} images")
    print("\n".join(layer_table(ds, images)))
    mt = ds["total_effect"].values[images].mean(0)
    if args.head:
        h = parse_head(args.head)
        layer, head = h.layer, h.head
    else:
        layer, head = divmod(int(np.argmax(mt)), mt.shape[1])
    print("\n".join(flow(svc, images, layer, head)))
    print("\n".join(restored(svc, images, layer, head)))
    print("\n".join(table_lines(proxy_table(ds, svc.valid))))


if __name__ == "__main__":
    main()
