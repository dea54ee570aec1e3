"""`vitscope export`, `vitscope figure` and `vitscope report`: a store's views, figures and findings as files that
open offline."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from vitscope.cli.serve import one_or_two
from vitscope.errors import VitscopeError


def cmd_export(args: argparse.Namespace) -> None:
    if len(one_or_two(args.store)) == 2:
        if args.heads:
            raise VitscopeError("--heads is for one store's snapshot: the comparison shows every head of both models")
        from vitscope.app.compare_export import export_compare

        out = export_compare(*args.store, args.image, args.out)
        print(f"comparison written: {out} ({out.stat().st_size / 1e6:.1f} MB; opens from disk, no server needed)")
        return
    from vitscope.app.export import export
    from vitscope.heads import parse_head

    heads = [parse_head(h, modes=False) for h in args.heads] if args.heads else None
    out = export(args.store[0], args.image, args.out, heads=heads, device=args.device, metric=args.metric,
                 mode=args.mode)
    print(f"snapshot written: {out} ({out.stat().st_size / 1e6:.1f} MB; opens from disk, no server needed)")


def cmd_figure(args: argparse.Namespace) -> None:
    from vitscope.plots.paper import write_figures

    written, skipped = write_figures(args.store, args.out, args.format, image=args.image, head=args.head,
                                     device=args.device, names=args.only,
                                     progress=None if args.quiet else lambda n: print(f"  {n}", flush=True))
    line = f"{len(written)} figures written to {args.out} ({args.format})"
    for why in dict.fromkeys(skipped.values()):  # one clause per reason, in the order the figures come
        line += f"; {', '.join(n for n, w in skipped.items() if w == why)} {why}"
    print(line)


def cmd_report(args: argparse.Namespace) -> None:
    from vitscope.report import write

    one_or_two(args.store)
    if args.out.suffix.lower() not in (".html", ".htm", ".pdf"):
        raise VitscopeError(f"--out {args.out}: give a .html or a .pdf file")
    for flag, n in (("--curve-images", args.curve_images), ("--explain-images", args.explain_images)):
        if n < 1:
            raise VitscopeError(f"{flag} {n}: give at least 1")
    quiet = args.quiet or len(args.store) == 2  # a comparison has no curves and no explanations
    with ExitStack() as bars:
        out = write(args.store, args.out, with_curves=not args.no_curves, device=args.device,
                    curve_images=args.curve_images, progress=bar(bars, "pruning curves", "image·step", quiet),
                    with_explain=not args.no_explain, explain_images=args.explain_images,
                    explain_progress=bar(bars, "explanations", "image", quiet))
    print(f"report written: {out} ({out.stat().st_size / 1e3:.0f} kB; one file, opens offline)")


def bar(bars: ExitStack, desc: str, unit: str, quiet: bool) -> Callable[[int, int], None]:
    """A progress bar that appears at its first report (a part the report leaves out shows none), closed with
    `bars`."""
    from tqdm import tqdm

    shown = []

    def progress(done: int, total: int) -> None:
        if not shown:
            shown.append(bars.enter_context(tqdm(desc=desc, unit=unit, disable=quiet)))
        shown[0].total = max(total, done)  # the prunable counts may need steps beyond those the curves show
        shown[0].update(done - shown[0].n)

    return progress


def add_parsers(sub) -> None:
    from vitscope.vocab import DEFAULT_METRIC, EXPLAIN_IMAGES, FIGURE_FORMATS, METRICS, MODES, WHOLE_HEAD

    p = sub.add_parser("export", help="one image's views as a self-contained HTML file (no server needed); with two "
                       "stores, their comparison on that image")
    p.add_argument("store", type=Path, nargs="+", help="a store; or two stores of the same images (as `vitscope "
                   "compare A B`)")
    p.add_argument("--image", type=int, required=True, help="image index in the (first) store (vitscope info STORE)")
    p.add_argument("--heads", nargs="+", metavar="L:H", help="heads to embed (default: the 6 most important)")
    p.add_argument("--metric", default=DEFAULT_METRIC, choices=list(METRICS))
    p.add_argument("--mode", type=int, default=WHOLE_HEAD, choices=MODES, help="pruning mode of the importance views")
    p.add_argument("--out", type=Path, required=True, help="the .html file to write")
    p.add_argument("--device", default="cpu", help="where the image's attention is computed")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("figure", help="every view and summary as a separate print file (svg, pdf or png), offline")
    p.add_argument("store", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the folder to write <figure>.<format> into")
    p.add_argument("--format", default="svg", choices=FIGURE_FORMATS)
    p.add_argument("--image", type=int, help="image index in the store (vitscope info STORE); the views of one "
                   "image, of its attention and of its explanation need it (both are recomputed by the store's model)")
    p.add_argument("--head", metavar="L:H", help="the head of the per-head views (default: the one whose pruning "
                   "hurts the image, or all images, most)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these figures (names: vitscope.plots.FIGURES)")
    p.add_argument("--device", default="cpu", help="where the image's attention is computed")
    p.add_argument("--quiet", action="store_true", help="no line per figure")
    p.set_defaults(func=cmd_figure)

    p = sub.add_parser("report", help="what a store says about its model, as one offline HTML file; with two "
                       "stores, what changed between their models")
    p.add_argument("store", type=Path, nargs="+", help="a store; or two stores of the same images")
    p.add_argument("--out", type=Path, required=True, help="the file to write: .html (figures inline), or .pdf")
    p.add_argument("--no-curves", action="store_true", help="leave out the pruning curves (they need the store's "
                   "model: minutes on a CPU)")
    p.add_argument("--curve-images", type=int, default=64, help="the pruning curves' seeded sample of images "
                   "(default 64)")
    p.add_argument("--no-explain", action="store_true", help="leave out which patch map is faithful (it needs the "
                   "store's model and a class basis: hundreds of forwards per image)")
    p.add_argument("--explain-images", type=int, default=EXPLAIN_IMAGES, help="the faithfulness benchmark's seeded "
                   f"sample of images (default {EXPLAIN_IMAGES})")
    p.add_argument("--device", default="cpu", help="where the pruning curves and the patch maps are computed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)
