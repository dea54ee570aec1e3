"""What storing the input maps adds to a build: the model work of one build batch with and without them, same
images, same model, one run.

    python benchmarks/input_maps.py                                   # demo model, CPU
    python benchmarks/input_maps.py --model timm:vit_tiny_patch16_224 \\
        --checkpoint ../shared/models/vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors --threads 1

Both prune every head in every mode (`engine.run`, timed once: it is the same code in both and most of the time).
Without the maps, the gradient proxy comes from its own backward through a gate on each head's output; with them,
one forward with a gate on the attention gives two backwards (the gradient proxy and the gradient-weighted rollout),
then the three maps (`per_image.analyse_batch`'s model work). Those two parts are timed in alternation, `--repeats`
times, and their medians compared with the pruning added. The rest of a build (binarising, patterns, writing, and
the attention the pruning pass no longer copies out) is the same or less with the maps, so the ratio printed is an
upper bound on what a whole build grows by. Not a test: timings are noisy.
"""

from __future__ import annotations

import argparse
import time

import torch
from build_batch import model_and_batch, parser

from vitscope import engine
from vitscope.analysis.explain import stored_maps
from vitscope.engine.explain import attention_gradients
from vitscope.models.adapter import merge_heads


def head_gate_gradient(ad, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient proxy as a build computed it without the maps: a gate of ones on each head's output."""
    gates = torch.ones(len(x), ad.num_layers, ad.num_heads, requires_grad=True)
    with torch.enable_grad():
        h = ad.embed(x)
        for i in range(ad.num_layers):
            parts = ad.attention(i, h)
            o = (parts.attn @ parts.v) * gates[:, i, :, None, None]
            h = ad.finish_block(i, h, ad.project(i, merge_heads(o), parts.gate))
        ce = torch.nn.functional.cross_entropy(ad.head(h).float(), y, reduction="sum")
        (g,) = torch.autograd.grad(ce, gates)
    return g.abs()


def without_maps(ad, x, y) -> None:
    head_gate_gradient(ad, x, y)


def with_maps(ad, x, y) -> None:
    g = attention_gradients(ad, x, y, with_ce=True)
    stored_maps(g.attention, g.relevance, ad.num_prefix)


def main() -> None:
    ap: argparse.ArgumentParser = parser(
        __doc__.splitlines()[0], 7, "alternating runs of each part; their medians are compared")
    args = ap.parse_args()
    ad, x, y = model_and_batch(args)
    t = time.perf_counter()
    engine.run(ad, x, y)
    pruning = time.perf_counter() - t
    times: dict[str, list[float]] = {"without maps": [], "with maps": []}
    with_maps(ad, x, y)  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("without maps", without_maps), ("with maps", with_maps)):
            t = time.perf_counter()
            fn(ad, x, y)
            times[name].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"pruning every head in every mode: {pruning:.2f} s a batch (the same in both)")
    for k, v in med.items():
        print(f"{k:>13}: {v:.3f} s a batch for the gradients{' and the maps' if k == 'with maps' else ''}")
    ratio = (pruning + med["with maps"]) / (pruning + med["without maps"])
    print(f"ratio with/without: {ratio:.3f} (goal: at most 1.10)")


if __name__ == "__main__":
    main()
