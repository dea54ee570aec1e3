"""Naive loop vs engine: all heads × modes 1–5, same images, same model, one run.

    python benchmarks/importance.py                                   # demo model, CPU
    python benchmarks/importance.py --model timm:vit_base_patch16_224 --device cuda \\
        --images 256 --naive-images 4 --batch-size 16 --precision bfloat16

Prints images/s of both, their ratio, the engine's achieved GFLOP/s, and the largest
difference between the two (they must agree). Not a test: timings are noisy.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vitscope import engine
from vitscope.engine.reference import reference_importance
from vitscope.models import load_model
from vitscope.vocab import ABLATION_MODES, PRECISIONS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=32, help="images for the engine")
    ap.add_argument("--naive-images", type=int, default=None, help="images for the naive loop (default: same)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=256, help="ablated sequences per engine forward")
    ap.add_argument("--precision", default="float32", choices=PRECISIONS)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ad = load_model(args.model, device=args.device)
    dev = ad.device
    if args.model == "demo":
        from vitscope.imagesets import demo

        imgs, labels = demo.eval_set(args.images)
        x, y = demo.to_tensor(imgs), torch.from_numpy(labels)
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.images, 3, *ad.model.patch_embed.img_size, generator=g)
        y = torch.randint(0, ad.num_classes, (args.images,), generator=g)
    x, y = x.to(dev), y.to(dev)
    n_naive = min(args.naive_images or args.images, args.images)
    print(f"model {args.model} on {dev} ({torch.get_num_threads()} CPU threads): "
          f"{ad.num_layers} layers × {ad.num_heads} heads × {len(ABLATION_MODES)} modes, {ad.num_tokens} tokens; "
          f"engine {args.images} images (batch {args.batch_size}, {args.precision}), naive {n_naive} images")

    def run_engine():
        out = []
        for s in range(0, args.images, args.batch_size):
            out.append(engine.run(ad, x[s:s + args.batch_size], y[s:s + args.batch_size],
                                  max_batch=args.max_batch, precision=args.precision))
        return out

    engine.run(ad, x[:2], y[:2], max_batch=args.max_batch, precision=args.precision)  # warm-up
    sync(dev)
    t = time.perf_counter()
    results = run_engine()
    sync(dev)
    t_engine = time.perf_counter() - t

    t = time.perf_counter()
    # the naive loop's own images, in batches that end at its count (the GPU commands give it fewer than a batch)
    naive = [reference_importance(ad, x[s:min(s + args.batch_size, n_naive)], y[s:min(s + args.batch_size, n_naive)])[0]
             for s in range(0, n_naive, args.batch_size)]
    sync(dev)
    t_naive = time.perf_counter() - t

    with FlopCounterMode(display=False) as fc:
        engine.run(ad, x[:1], y[:1], max_batch=args.max_batch, precision=args.precision)
    gflop_per_image = fc.get_total_flops() / 1e9

    fast = torch.cat([r.importance for r in results])[:n_naive]
    diff = (fast - torch.cat(naive)).abs().max().item()
    ips_engine, ips_naive = args.images / t_engine, n_naive / t_naive
    print(f"naive : {ips_naive:8.2f} images/s  ({t_naive:.1f} s)")
    print(f"engine: {ips_engine:8.2f} images/s  ({t_engine:.1f} s)  "
          f"{gflop_per_image * ips_engine:.1f} GFLOP/s ({gflop_per_image:.2f} GFLOP per image)")
    print(f"speed-up engine/naive: {ips_engine / ips_naive:.2f}x   max |engine - naive| = {diff:.1e}")
    if args.images:
        print(f"projected: 1000 images in {1000 / ips_engine:.0f} s")


if __name__ == "__main__":
    main()
