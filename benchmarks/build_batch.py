"""What the build-cost benchmarks share (`effects.py`, `input_maps.py`): their options, and the model with one seeded
build batch of random images and labels."""

from __future__ import annotations

import argparse

import torch

from vitscope.models import load_model


def parser(description: str, repeats: int, what: str) -> argparse.ArgumentParser:
    """--model, --checkpoint, --batch-size, --threads, and --repeats (`what` says what is repeated)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--batch-size", type=int, default=16, help="images per batch, as `vitscope build --batch-size`")
    ap.add_argument("--repeats", type=int, default=repeats, help=what)
    ap.add_argument("--threads", type=int, default=None)
    return ap


def model_and_batch(args: argparse.Namespace):
    """(adapter, images [B, 3, h, w], labels [B]) for the parsed options; prints what is measured."""
    if args.threads:
        torch.set_num_threads(args.threads)
    ad = load_model(args.model, checkpoint=args.checkpoint)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, ad.grid * ad.patch_size, ad.grid * ad.patch_size, generator=g)
    y = torch.randint(0, ad.num_classes, (args.batch_size,), generator=g)
    print(f"model {args.model}: {ad.num_layers} layers × {ad.num_heads} heads, {ad.num_tokens} tokens; batch "
          f"{args.batch_size}, {torch.get_num_threads()} CPU threads")
    return ad, x, y
