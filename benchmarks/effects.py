"""What storing the heads' effects adds to a build: one build batch's pruning against the work the effects add, same
images, same model, one run.

    python benchmarks/effects.py                                      # demo model, CPU
    python benchmarks/effects.py --model timm:vit_tiny_patch16_224 \\
        --checkpoint ../shared/models/vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors --threads 1

The total effect is read off the pruning's own whole-head forwards (one gather of the label's logit), so what a build
adds is the decomposition (`engine.effects.decompose`: two explicit forwards and each head's output through the
projection alone) and the rollout impact of every head (`analysis.explain.rollout_impacts`). Pruning every head in
every mode (`engine.run`) is timed once; the added parts `--repeats` times, their median compared with the pruning.
The rest of a build (attention, gradients, binarising, patterns, layouts) only adds to the denominator, so the
ratio printed is an upper bound on what a whole build grows by. Not a test: timings are noisy.
"""

from __future__ import annotations

import argparse
import time

import torch

from vitscope import engine
from vitscope.analysis.explain import rollout_impacts
from vitscope.engine.effects import decompose
from vitscope.engine.explain import attention_gradients
from vitscope.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--batch-size", type=int, default=16, help="images per batch, as `vitscope build --batch-size`")
    ap.add_argument("--repeats", type=int, default=5, help="runs of the added parts; their median is compared")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ad = load_model(args.model, checkpoint=args.checkpoint)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, ad.grid * ad.patch_size, ad.grid * ad.patch_size, generator=g)
    y = torch.randint(0, ad.num_classes, (args.batch_size,), generator=g)
    print(f"model {args.model}: {ad.num_layers} layers × {ad.num_heads} heads, {ad.num_tokens} tokens; batch "
          f"{args.batch_size}, {torch.get_num_threads()} CPU threads")
    t = time.perf_counter()
    engine.run(ad, x, y)
    pruning = time.perf_counter() - t
    attn = attention_gradients(ad, x, y).attention  # the build has it already
    parts: dict[str, list[float]] = {"decomposition": [], "rollout impact": []}
    decompose(ad, x, y)  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("decomposition", lambda: decompose(ad, x, y)),
                         ("rollout impact", lambda: rollout_impacts(attn, ad.num_prefix))):
            t = time.perf_counter()
            fn()
            parts[name].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in parts.items()}
    print(f"pruning every head in every mode: {pruning:.2f} s a batch")
    for k, v in med.items():
        print(f"{k:>32}: {v:.3f} s a batch")
    ratio = (pruning + sum(med.values())) / pruning
    print(f"ratio with/without the effects: {ratio:.3f} (goal: at most 1.10)")


if __name__ == "__main__":
    main()
