"""`vitscope demo`, `vitscope build` and `vitscope train-demo`: making stores (and the demo's model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitscope.cli.serve import add_serve_args, serving
from vitscope.errors import VitscopeError

# = vitscope.models.loading.DEMO_WEIGHTS, without importing torch: --help and early errors stay quick and quiet
DEMO_WEIGHTS = Path(__file__).parents[1] / "models" / "demo_vit.safetensors"


def cmd_demo(args: argparse.Namespace) -> None:
    serving_kw = None if args.no_serve else serving(args)  # before torch loads and the build starts
    from vitscope.build import demo_store
    from vitscope.store import open_store
    from vitscope.summary import store_summary

    # Served, the app comes up once the per-image analysis is in the store; the layouts follow in the background.
    path = demo_store(args.device, args.limit, layouts_later=not args.no_serve, progress=not args.quiet)
    print(store_summary(open_store(path)))
    print(f"\nstore: {path}  (see also: vitscope info {path})", flush=True)
    if not args.no_serve:
        from vitscope.app import serve

        serve(path, device=args.device, **serving_kw)


def cmd_train_demo(args: argparse.Namespace) -> None:
    if args.rounds is not None and args.rounds < 1:
        raise VitscopeError(f"--rounds {args.rounds}: give at least 1 round")
    out = args.out.resolve()
    try:  # before the training, not after it
        out.parent.mkdir(parents=True, exist_ok=True)
        existed = out.exists()
        out.open("ab").close()
        if not existed:
            out.unlink()
    except OSError as e:
        raise VitscopeError(f"cannot write the weights to {out}: {e.strerror}; pass another --out") from None
    from vitscope.train_demo import ROUNDS, train

    acc = train(rounds=args.rounds or ROUNDS, seed=args.seed, out=args.out)
    print(f"held-out accuracy on the 1000 demo evaluation images: {acc:.1%}  (weights: {args.out})")


def cmd_build(args: argparse.Namespace) -> None:
    from vitscope.config import from_args

    cfg = from_args(args)  # a bad value: one line, before torch loads or anything is written
    from vitscope.build import build

    timings: dict[str, float] = {}
    out = build(cfg, timings=timings)
    times = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    print(f"store ready: {out}" + (f"  ({times})" if times else ""))


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="build the demo store (first time only), summarise it and serve the app")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--limit", type=int, help="only the first N demo images (a quicker first run)")
    p.add_argument("--no-serve", action="store_true", help="build and summarise only")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines (for scripts)")
    add_serve_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train-demo", help="train the embedded demo ViT (seeded; prints held-out accuracy)")
    p.add_argument("--rounds", type=int, help="fresh compositions of the training digits (default 330)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEMO_WEIGHTS)
    p.set_defaults(func=cmd_train_demo)

    p = sub.add_parser("build", help="analyse a model on an image folder into a store")
    from vitscope.config import add_arguments

    add_arguments(p)  # every flag's default and help come from BuildConfig
    p.set_defaults(func=cmd_build)
