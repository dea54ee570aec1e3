"""`vitscope compare A B`: two stores of the same images, head by head (or side by side in the app)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitscope.cli.serve import add_serve_args, serving
from vitscope.errors import VitscopeError


def cmd_compare(args: argparse.Namespace) -> None:
    import json

    from vitscope.compare import compare, format_report
    from vitscope.store import open_store

    if args.good is not None and not 0 <= args.good <= 1:
        raise VitscopeError(f"--good {args.good}: give a similarity from 0 to 1")
    if args.serve:
        if args.json or args.good is not None:
            raise VitscopeError("--serve shows the comparison in the app: give it without --json and --good")
        from vitscope.app import serve

        serve(args.a, show=False, compare_with=args.b, **serving(args))
        return
    a, b = open_store(args.a), open_store(args.b)  # missing, foreign, old or unfinished: one line
    result = compare(a, b, good=args.good)
    if args.json:
        print(json.dumps({"stores": [str(args.a), str(args.b)], **result}, ensure_ascii=False))
    else:
        print(format_report(result, (str(args.a), str(args.b))))


def add_parsers(sub) -> None:
    from vitscope.vocab import GOOD_PARTNER

    p = sub.add_parser("compare", help="two stores of the same images side by side: per layer, and each head of A "
                       "paired with the head of B that behaves most like it")
    p.add_argument("a", type=Path, metavar="A", help="a store (vitscope build)")
    p.add_argument("b", type=Path, metavar="B", help="a store of the same images (another model, or a retrained one)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the report")
    p.add_argument("--good", type=float, metavar="SIMILARITY",
                   help=f"least similarity of a good partner; heads without one are roles of one model only "
                        f"(default: {GOOD_PARTNER}, or lower where most pairs of the two models are less alike: "
                        "the outliers below them, docs/guide.md)")
    p.add_argument("--serve", action="store_true", help="show the comparison in the app (the compare view) instead "
                   "of printing it; takes the serve flags below")
    add_serve_args(p)
    p.set_defaults(func=cmd_compare)
