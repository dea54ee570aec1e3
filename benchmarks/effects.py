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

from build_batch import model_and_batch, parser

from vitscope import engine
from vitscope.analysis.explain import rollout_impacts
from vitscope.engine.effects import decompose
from vitscope.engine.explain import attention_gradients


def main() -> None:
    ap: argparse.ArgumentParser = parser(
        __doc__.splitlines()[0], 5, "runs of the added parts; their median is compared")
    args = ap.parse_args()
    ad, x, y = model_and_batch(args)
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
