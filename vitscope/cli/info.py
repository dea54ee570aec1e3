"""`vitscope info`: what is in a store (head kinds, the proxies' agreement with exact pruning, sinks, a class's
trends), or what vitscope sees in a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitscope.errors import VitscopeError


def _model_args(p: argparse.ArgumentParser) -> None:
    """`info --model`: the model flags of `vitscope build` (from BuildConfig), optional here."""
    from vitscope.config import BuildConfig, help_of

    p.add_argument("--model", help=help_of("model"))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pretrained", action="store_true", help=help_of("pretrained"))
    g.add_argument("--checkpoint", type=Path, help=help_of("checkpoint"))
    p.add_argument("--device", default=BuildConfig.device, help=help_of("device"))


def cmd_info(args: argparse.Namespace) -> None:
    if (args.store is None) == (args.model is None):
        raise VitscopeError("give a STORE to describe, or --model SPEC (not both)")
    if args.cls is not None and args.store is None:
        raise VitscopeError("--class needs a STORE: the class's images are in a store")
    if args.store is None:
        from vitscope.models import load_model

        adapter = load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device)
        for key, value in adapter.describe().items():
            print(f"{key:>14}: {value}")
        return
    from vitscope.readout.store_data import StoreData
    from vitscope.store import MISSING
    from vitscope.summary import describe
    from vitscope.vocab import STORED_MAPS

    text = describe(args.store)
    data = StoreData(args.store, unfinished=True)  # whatever chunks are finished; the rest is not valid
    cls = None if args.cls is None else _find_class(data, args.cls)  # a bad name: one line, nothing else
    print(text)
    _print_proxy(data, data.valid)
    _print_sinks(data)
    _print_section("input maps", [f"{', '.join(STORED_MAPS)} of every image; `vitscope explain` adds occlusion and "
                                  "how faithful each is" if data.has_input_maps else MISSING.format("input maps")])
    if cls is not None:
        _print_class(data, *cls, args.top)


def _print_section(name: str, lines: list[str]) -> None:
    head = f"{name:>13}: "
    for i, line in enumerate(lines):
        print((head if i == 0 else " " * len(head)) + line)


def _print_proxy(data, scope, who: str = "") -> None:
    """The gradient proxy against exact ΔCE (every store has both), then every proxy against the exact total
    effect, or one line saying the store has no effects (built before they were stored)."""
    from vitscope.analysis.proxy import EXACT, proxy_table, summary_lines, table_lines
    from vitscope.store import MISSING

    _print_section("proxy" + who, summary_lines(data.importance, data.baseline_prob, data.grad_importance, scope))
    table = table_lines(proxy_table(data.ds, data.valid, scope)) if EXACT in data.ds else [MISSING.format(
        "head effects")]
    if data.effects_why:
        table.append(f"no direct effects or output norms: {data.effects_why}")
    _print_section("proxies" + who, table)


def _print_sinks(data) -> None:
    """The sinks section: sink heads, per layer the sink and high-norm patches and the prefix tokens' share."""
    from vitscope import store
    from vitscope.summary import sink_lines

    if not data.ds.attrs.get("complete"):
        return  # the per-layer sinks are computed over all images, once the last chunk is in
    _print_section("sinks", [line for line in sink_lines(data.ds) if line] if data.has_sinks else
                   [store.SINKS_MISSING])


def _find_class(data, text: str) -> tuple[int, list[int]]:
    from vitscope.classes import match_class

    return match_class(text, data.class_names, data.classes_present)


def _print_class(data, cls: int, matches: list[int], top: int) -> None:
    """`info STORE --class NAME`: the class's accuracy, the heads it relies on most, its strength entropy."""
    from vitscope.classes import class_report
    from vitscope.vocab import WHOLE_HEAD

    names, valid = data.class_names, data.valid
    r = class_report(cls, data.label, valid, data.baseline_prob, data.importance, data.topk_idx,
                     data.strength_entropy, top=top)
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
    _print_proxy(data, data.class_images(cls), " (class)")


def _images(n: int) -> str:
    return "image" if n == 1 else "images"


def add_parsers(sub) -> None:
    p = sub.add_parser("info", help="what is in a store, or what vitscope sees in a model")
    p.add_argument("store", nargs="?", type=Path, help="a store built by vitscope build")
    p.add_argument("--class", dest="cls", metavar="NAME", help="trends of one class of the store's images (exact "
                   "name, else a part of it in any case): accuracy, the heads it relies on, strength entropy")
    p.add_argument("--top", type=int, default=10, help="how many heads --class lists")
    _model_args(p)
    p.set_defaults(func=cmd_info)
