"""`vitscope` command line: demo | build | serve | info | compare | ablate | export | train-demo.

User errors (VitscopeError) print one line and exit 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from vitscope.errors import FULL, VitscopeError, write_failure
from vitscope.text import printable

# Before torch or any OpenMP library loads: threads that spin while they wait made a build on 2 cores 2-4x
# slower whenever anything else ran on the machine (measured: 28-44 s for a 64-image chunk with 2 threads,
# 11-17 s with 1); waiting passively, 2 threads were no slower than 1 under that load (docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# = vitscope.models.loading.DEMO_WEIGHTS, without importing torch: --help and early errors stay quick and quiet
DEMO_WEIGHTS = Path(__file__).parent / "models" / "demo_vit.safetensors"


def _model_args(p: argparse.ArgumentParser) -> None:
    """`info --model`: the model flags of `vitscope build` (from BuildConfig), optional here."""
    from vitscope.config import BuildConfig, help_of

    p.add_argument("--model", help=help_of("model"))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pretrained", action="store_true", help=help_of("pretrained"))
    g.add_argument("--checkpoint", type=Path, help=help_of("checkpoint"))
    p.add_argument("--device", default=BuildConfig.device, help=help_of("device"))


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default="127.0.0.1",
                   help="interface to bind; anything but loopback (e.g. 0.0.0.0) needs --basic-auth or --no-auth")
    g = p.add_argument_group("login (Panel's own; required off loopback)")
    g.add_argument("--basic-auth", metavar="PASSWORD|FILE",
                   help="one password, or a JSON file of users {\"name\": \"password\"} (a file keeps it out of `ps`)")
    g.add_argument("--cookie-secret", help="signs the login cookie (default: a new one per run)")
    g.add_argument("--no-auth", action="store_true", help="serve a non-loopback address without any login")
    g.add_argument("--oauth-provider", help="Panel OAuth provider: github, google, azure, okta, generic, ...")
    g.add_argument("--oauth-key", help="OAuth client id")
    g.add_argument("--oauth-secret", help="OAuth client secret")
    g.add_argument("--oauth-redirect-uri", help="OAuth redirect URI registered with the provider")
    g.add_argument("--oauth-extra-params", metavar="JSON", help="extra provider parameters as a JSON object")
    g.add_argument("--oauth-encryption-key", help="encrypts OAuth tokens in cookies (`panel oauth-secret`)")
    p.add_argument("--threads", type=int, default=0,
                   help="Panel threads for the sessions' callbacks (default 0: on the server's event loop, which "
                        "measured faster on 2 cores; benchmarks/sessions.py)")


def _serving(args) -> dict:
    """The serve keywords of --port, --address, --threads and the login flags, checked before any work (a demo
    build takes minutes: a refused address or a taken port is said first)."""
    from vitscope.app.server import Login, check_address, parse_extra_params

    login = Login(basic_auth=args.basic_auth, cookie_secret=args.cookie_secret, no_auth=args.no_auth,
                  oauth_provider=args.oauth_provider, oauth_key=args.oauth_key, oauth_secret=args.oauth_secret,
                  oauth_redirect_uri=args.oauth_redirect_uri,
                  oauth_extra_params=parse_extra_params(args.oauth_extra_params),
                  oauth_encryption_key=args.oauth_encryption_key)
    login.check()
    check_address(args.address, args.port, login)
    return dict(port=args.port, address=args.address, login=login, threads=args.threads or None,
                figure_bytes=_figure_bytes)


def _figure_bytes(*args) -> bytes:
    """The app's "save figure": vitscope.plots' rendering, imported at the first click (HoloViews and matplotlib
    take seconds to import; the app does not wait for them)."""
    from vitscope.plots.paper import figure_bytes

    return figure_bytes(*args)


def _load(args):
    from vitscope.models import load_model

    return load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device)


def cmd_demo(args) -> None:
    serving = None if args.no_serve else _serving(args)  # before torch loads and the build starts
    from vitscope.build import demo_store
    from vitscope.store import open_store
    from vitscope.summary import store_summary

    # Served, the app comes up once the per-image analysis is in the store; the layouts follow in the background.
    path = demo_store(args.device, args.limit, layouts_later=not args.no_serve, progress=not args.quiet)
    print(store_summary(open_store(path)))
    print(f"\nstore: {path}  (see also: vitscope info {path})", flush=True)
    if not args.no_serve:
        from vitscope.app import serve

        serve(path, device=args.device, **serving)


def cmd_train_demo(args) -> None:
    if args.rounds is not None and args.rounds < 1:
        raise VitscopeError(f"--rounds {args.rounds}: give at least 1 round")
    out = args.out.resolve()
    try:  # before the 25 minutes of training, not after them
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


def cmd_info(args) -> None:
    if (args.store is None) == (args.model is None):
        raise VitscopeError("give a STORE to describe, or --model SPEC (not both)")
    if args.cls is not None and args.store is None:
        raise VitscopeError("--class needs a STORE: the class's images are in a store")
    if args.store is not None:
        from vitscope.store import describe

        text = describe(args.store)
        arrays = _info_arrays(args.store)
        cls = None if args.cls is None else _find_class(arrays, args.cls)  # a bad name: one line, nothing else
        print(text)
        _print_proxy(arrays, arrays["valid"])
        _print_sinks(args.store)
        if cls is not None:
            _print_class(arrays, *cls, args.top)
        return
    for key, value in _load(args).describe().items():
        print(f"{key:>14}: {value}")


def _info_arrays(path: Path) -> dict:
    """The small per-head arrays `info` summarises (whatever chunks are finished; the rest is not valid)."""
    import xarray as xr

    from vitscope.vocab import METRICS, MODES

    # by label: the summaries index these numpy arrays by mode and by METRICS' order
    ds = xr.open_zarr(str(path), consolidated=True).sel(mode=list(MODES))
    out = {name: ds[name].values for name in ("label", "valid", "baseline_prob", "topk_idx", "strength_entropy")
           if name in ds}
    out["valid"] = out["valid"].astype(bool)
    out["importance"] = ds["importance"].sel(metric=list(METRICS)).values  # [N, L, H, mode, metric]
    out["grad_importance"] = ds["grad_importance"].values if "grad_importance" in ds else None
    out["class_names"] = [str(c) for c in ds["class_name"].values]
    return out


def _print_proxy(arrays: dict, scope, who: str = "") -> None:
    from vitscope.analysis.proxy import summary_lines

    if arrays["grad_importance"] is None:
        print(f"{'proxy':>13}: this store has no grad_importance")
        return
    lines = summary_lines(arrays["importance"], arrays["baseline_prob"], arrays["grad_importance"], scope)
    head = f"{'proxy' + who:>13}: "
    for i, line in enumerate(lines):
        print((head if i == 0 else " " * len(head)) + line)


def _print_sinks(path: Path) -> None:
    """The sinks section: sink heads, per layer the sink and high-norm patches and the prefix tokens' share."""
    import xarray as xr

    from vitscope import store
    from vitscope.summary import sink_lines

    ds = xr.open_zarr(str(path), consolidated=True)
    if not ds.attrs.get("complete"):
        return  # the per-layer sinks are computed over all images, once the last chunk is in
    lines = [line for line in sink_lines(ds) if line] if store.has_sinks(ds) else [store.SINKS_MISSING]
    head = f"{'sinks':>13}: "
    for i, line in enumerate(lines):
        print((head if i == 0 else " " * len(head)) + line)


def _find_class(arrays: dict, text: str) -> tuple[int, list[int]]:
    from vitscope.classes import match_class

    present = sorted({int(c) for c in arrays["label"][arrays["valid"]]})
    return match_class(text, arrays["class_names"], present)


def _print_class(arrays: dict, cls: int, matches: list[int], top: int) -> None:
    """`info STORE --class NAME`: the class's accuracy, the heads it relies on most, its strength entropy."""
    import numpy as np

    from vitscope.classes import class_report
    from vitscope.vocab import WHOLE_HEAD

    names, valid = arrays["class_names"], arrays["valid"]
    r = class_report(cls, arrays["label"], valid, arrays["baseline_prob"], arrays["importance"],
                     arrays["topk_idx"], arrays["strength_entropy"], top=top)
    also = [names[c] for c in matches if c != cls]
    print(f"\nclass {names[cls]!r} (index {cls}): {r.images} {_images(r.images)}, "
          f"unpruned top-1 accuracy {r.accuracy:.1%} "
          f"({r.correct}/{r.images})" + (f"; also matching: {', '.join(map(repr, also[:5]))}"
                                         f"{', …' if len(also) > 5 else ''}" if also else ""))
    print(f"heads whose pruning (whole head, mode {WHOLE_HEAD}) hurts this class most, over its {r.images} "
          f"{_images(r.images)}:")
    print(f"  {'head':>6}  {'drop of P[true] (mean ± std)':>28}  {'mean JSD':>9}  top-1 changes")
    for h in r.heads:
        print(f"  {h.name:>6}  {h.drop_mean:>+17.4f} ± {h.drop_std:<8.4f}  {h.jsd_mean:>9.4f}  "
              f"{h.flips:>4} / {r.images}")
    print(f"mean strength entropy per layer (this class / all {int(valid.sum())} images):")
    for row in r.layers:
        print(f"  layer {row.layer:>2}: {row.entropy_class:.3f} / {row.entropy_all:.3f}"
              f"  ({row.entropy_class - row.entropy_all:+.3f})")
    _print_proxy(arrays, valid & (np.asarray(arrays["label"]) == cls), " (class)")


def _images(n: int) -> str:
    return "image" if n == 1 else "images"


def cmd_compare(args) -> None:
    import json

    from vitscope.compare import compare, format_report
    from vitscope.store import open_store

    if args.good is not None and not 0 <= args.good <= 1:
        raise VitscopeError(f"--good {args.good}: give a similarity from 0 to 1")
    if args.serve:
        if args.json or args.good is not None:
            raise VitscopeError("--serve shows the comparison in the app: give it without --json and --good")
        from vitscope.app import serve

        serve(args.a, show=False, compare_with=args.b, **_serving(args))
        return
    a, b = open_store(args.a), open_store(args.b)  # missing, foreign, old or unfinished: one line
    result = compare(a, b, good=args.good)
    if args.json:
        print(json.dumps({"stores": [str(args.a), str(args.b)], **result}, ensure_ascii=False))
    else:
        print(format_report(result, (str(args.a), str(args.b))))


def _one_or_two(stores: list[Path]) -> list[Path]:
    """The stores of serve, export and report: one, or two to compare."""
    if len(stores) > 2:
        raise VitscopeError(f"give one store, or two to compare them, not {len(stores)}")
    return stores


def cmd_serve(args) -> None:
    from vitscope.app import serve

    other = args.store[1] if len(_one_or_two(args.store)) == 2 else None
    serve(args.store[0], device=args.device, show=False, scheduler=args.scheduler, compare_with=other,
          **_serving(args))


def cmd_export(args) -> None:
    if len(_one_or_two(args.store)) == 2:
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


def cmd_figure(args) -> None:
    from vitscope.plots.paper import write_figures

    written, skipped = write_figures(args.store, args.out, args.format, image=args.image, head=args.head,
                                     device=args.device, names=args.only,
                                     progress=None if args.quiet else lambda n: print(f"  {n}", flush=True))
    line = f"{len(written)} figures written to {args.out} ({args.format})"
    if skipped:
        line += f"; {', '.join(skipped)} show one image: give --image for them"
    print(line)


def cmd_report(args) -> None:
    from vitscope.report import write

    _one_or_two(args.store)
    if args.out.suffix.lower() not in (".html", ".htm", ".pdf"):
        raise VitscopeError(f"--out {args.out}: give a .html or a .pdf file")
    if args.curve_images < 1:
        raise VitscopeError(f"--curve-images {args.curve_images}: give at least 1")
    from tqdm import tqdm

    quiet = args.quiet or args.no_curves or len(args.store) == 2  # a comparison has no curves
    with tqdm(desc="pruning curves", unit="image·step", disable=quiet) as bar:
        def progress(done: int, total: int) -> None:  # thousands of pruned forwards
            bar.total = max(total, done)  # the prunable counts may need steps beyond those the curves show
            bar.update(done - bar.n)

        out = write(args.store, args.out, with_curves=not args.no_curves, device=args.device,
                    curve_images=args.curve_images, progress=progress)
    print(f"report written: {out} ({out.stat().st_size / 1e3:.0f} kB; one file, opens offline)")


def cmd_build(args) -> None:
    from vitscope.config import from_args

    cfg = from_args(args)  # a bad value: one line, before torch loads or anything is written
    from vitscope.build import build

    timings: dict[str, float] = {}
    out = build(cfg, timings=timings)
    times = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    print(f"store ready: {out}" + (f"  ({times})" if times else ""))


def build_parser() -> argparse.ArgumentParser:
    from vitscope import __version__
    from vitscope.vocab import DEFAULT_METRIC, FIGURE_FORMATS, GOOD_PARTNER, METRICS, MODES, WHOLE_HEAD

    parser = argparse.ArgumentParser(prog="vitscope", description="How Vision Transformers use attention.")
    parser.add_argument("--version", action="version", version=f"vitscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="build the demo store (first time only), summarise it and serve the app")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--limit", type=int, help="only the first N demo images (a quicker first run)")
    p.add_argument("--no-serve", action="store_true", help="build and summarise only")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines (for scripts)")
    _serve_args(p)
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

    p = sub.add_parser("serve", help="serve the app for a store (binds 127.0.0.1 unless --address says otherwise)")
    p.add_argument("store", type=Path, nargs="+", help="a store; or two stores of the same images: the compare "
                   "view (as `vitscope compare A B --serve`)")
    _serve_args(p)
    p.add_argument("--device", default="cpu", help="where the on-demand attention is computed")
    p.add_argument("--scheduler", help="keep the ablation service's model on a worker of this Dask scheduler "
                   "(e.g. tcp://gpu-host:8786); the store must be readable there at the same path")
    p.set_defaults(func=cmd_serve)

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
                   "image and of its attention need it (the attention is recomputed by the store's model)")
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
    p.add_argument("--device", default="cpu", help="where the pruning curves are computed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("info", help="what is in a store, or what vitscope sees in a model")
    p.add_argument("store", nargs="?", type=Path, help="a store built by vitscope build")
    p.add_argument("--class", dest="cls", metavar="NAME", help="trends of one class of the store's images (exact "
                   "name, else a part of it in any case): accuracy, the heads it relies on, strength entropy")
    p.add_argument("--top", type=int, default=10, help="how many heads --class lists")
    _model_args(p)
    p.set_defaults(func=cmd_info)

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
    _serve_args(p)
    p.set_defaults(func=cmd_compare)

    from vitscope.service.cli import add_parser as add_ablate

    add_ablate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except VitscopeError as e:
        print(f"vitscope {args.command}: error: {printable(e, limit=1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; finished chunks are kept: run the same command to resume" if args.command in ("build", "demo") else ""
        print(f"vitscope {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like, which stopped reading: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as e:  # a full or read-only disk that no write point turned into its line: still one line
        if e.errno not in FULL | {errno.EROFS}:
            raise
        print(f"vitscope {args.command}: error: {printable(write_failure(e, None), limit=1000)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
