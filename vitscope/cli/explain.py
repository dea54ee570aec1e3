"""`vitscope explain`: where in an image the decision comes from (four patch maps) and how faithful each map is."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitscope.errors import VitscopeError
from vitscope.vocab import EXPLAIN_DIRECTIONS as DIRECTIONS
from vitscope.vocab import EXPLAIN_METHODS, explain_methods


def add_parsers(sub) -> None:
    p = sub.add_parser("explain", help="one image's patch maps (attention, rollout, grad_rollout, occlusion) and "
                       "their faithfulness curves, or a benchmark of the maps' faithfulness over a sample")
    p.add_argument("store", type=Path)
    p.add_argument("--image", type=int, help="image index in the store (vitscope info STORE)")
    p.add_argument("--images", type=int, metavar="N", help="benchmark over a seeded sample of N images")
    p.add_argument("--class", dest="cls", metavar="NAME", help="with --images: sample the class's images only")
    p.add_argument("--methods", nargs="+", metavar="METHOD", help=f"the maps ({', '.join(EXPLAIN_METHODS)}; "
                   "default all)")
    p.add_argument("--seed", type=int, default=0, help="with --images: the sample's and the bootstrap's seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> None:
    if (args.image is None) == (args.images is None):
        raise VitscopeError("give --image I (one image) or --images N (a benchmark over N images), not both"
                            if args.image is not None else "give --image I (one image) or --images N (a benchmark)")
    if args.cls is not None and args.image is not None:
        raise VitscopeError("--class goes with --images (the benchmark's sample), not with --image")
    if args.images is not None and args.images < 1:
        raise VitscopeError(f"--images needs a count of at least 1, got {args.images}")
    methods = explain_methods(args.methods)
    from tqdm import tqdm

    from vitscope.service import Service
    from vitscope.store import check_image, open_store

    ds = open_store(args.store)
    cls = None
    if args.cls is not None:
        from vitscope.classes import match_class

        names = [str(c) for c in ds["class_name"].values]
        cls = match_class(args.cls, names, sorted({int(c) for c in ds["label"].values[ds["valid"].values]}))[0]
    if args.image is not None:  # before the model loads
        check_image(args.store, args.image, ds["valid"].values.astype(bool), ds["image_id"].values)
    try:
        svc = Service(args.store, args.device)
    except VitscopeError as e:
        raise VitscopeError(f"{args.store}: its model cannot be loaded here: {e}") from None
    # the bar goes to stderr, so --json output stays one object
    with tqdm(desc="explain", unit="forward" if args.image is not None else "img", leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        if args.image is not None:
            result = svc.explain(args.image, methods, progress)
            text = readable(result, svc.class_names)
        else:
            result = svc.explain_set(args.images, cls, args.seed, methods, progress)
            text = benchmark_table(result, svc.class_names)
    print(json.dumps(result) if args.json else text)


def readable(r: dict, class_names: list[str]) -> str:
    """One image's explanation as a short table: each map's AUC per direction and its most relevant patches."""
    g = r["grid"][1]
    lines = [f"image {r['image']}, target {class_names[r['target']]!r}: P[target] as patches are removed, AUC over "
             f"the removed fraction 0..0.9 ({r['grid'][0]}×{g} patches)",
             f"{'method':<14}{'most first':>12}{'least first':>13}   most relevant patches (row, col)"]
    for m, curves in r["auc"].items():
        values = r["maps"][m]
        top = sorted(range(len(values)), key=lambda i: (-values[i], i))[:3]
        lines.append(f"{m:<14}{curves[DIRECTIONS[0]]:12.4f}{curves[DIRECTIONS[1]]:13.4f}   "
                     + " ".join(f"({i // g}, {i % g})" for i in top))
    lines.append("a faithful map: low AUC when the most relevant go first, high when the least relevant go first")
    return "\n".join(lines)


def benchmark_table(r: dict, class_names: list[str]) -> str:
    """The benchmark as a table: mean AUC and its 95 % bootstrap interval per method and direction."""
    who = "all classes" if r["cls"] is None else f"class {class_names[r['cls']]!r}"
    lines = [f"faithfulness over {len(r['images'])} of {r['of']} images ({who}, seed {r['seed']}): mean AUC "
             "[95 % bootstrap interval]",
             f"{'method':<14}{'most relevant first':>30}{'least relevant first':>30}"]
    for m, by in r["mean_auc"].items():
        cells = [f"{by[d]:.4f} [{r['interval'][m][d][0]:.4f}, {r['interval'][m][d][1]:.4f}]" for d in DIRECTIONS]
        lines.append(f"{m:<14}" + "".join(f"{c:>30}" for c in cells))
    best = r["most_faithful"]
    lines.append(f"most faithful: {best[DIRECTIONS[0]]} when the most relevant go first (lowest AUC), "
                 f"{best[DIRECTIONS[1]]} when the least relevant go first (highest AUC)")
    return "\n".join(lines)
