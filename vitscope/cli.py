"""`vitscope` command line: demo | train-demo | info.

User errors (VitscopeError) print one line and exit 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitscope.errors import VitscopeError


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="'demo' or 'timm:<name>' (e.g. timm:vit_base_patch16_224)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pretrained", action="store_true", help="download the model's weights through timm")
    g.add_argument("--checkpoint", type=Path, help="local .pth/.safetensors state dict")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def _load(args):
    from vitscope.models import load_model

    return load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device)


def cmd_demo(args) -> None:
    from vitscope.models import load_model
    from vitscope.summary import demo_summary

    print(demo_summary(load_model("demo", device=args.device), limit=args.limit, batch_size=args.batch_size))


def cmd_train_demo(args) -> None:
    from vitscope.train_demo import train

    acc = train(rounds=args.rounds, seed=args.seed, out=args.out)
    print(f"held-out accuracy on the 1000 demo evaluation images: {acc:.1%}  (weights: {args.out})")


def cmd_info(args) -> None:
    for key, value in _load(args).describe().items():
        print(f"{key:>14}: {value}")


def build_parser() -> argparse.ArgumentParser:
    from vitscope import __version__
    from vitscope.models.loading import DEMO_WEIGHTS

    parser = argparse.ArgumentParser(prog="vitscope", description="How Vision Transformers use attention.")
    parser.add_argument("--version", action="version", version=f"vitscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="head importance of the embedded demo ViT on the demo images")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--limit", type=int, default=None, help="use the first N demo images (default: all 1000)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train-demo", help="train the embedded demo ViT (seeded; prints held-out accuracy)")
    p.add_argument("--rounds", type=int, default=270, help="fresh compositions of the training digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEMO_WEIGHTS)
    p.set_defaults(func=cmd_train_demo)

    p = sub.add_parser("info", help="what vitscope sees in a model (layers, heads, prefix tokens, grid)")
    _model_args(p)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except VitscopeError as e:
        print(f"vitscope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitscope {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
