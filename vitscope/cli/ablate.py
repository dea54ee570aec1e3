"""`vitscope ablate`: the service from the command line (heads pruned or patched together, pairs, curves, saliency, new
images)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vitscope.errors import VitscopeError
from vitscope.heads import parse_head, parse_patch_heads
from vitscope.vocab import (
    CURVE_IMAGES,
    CURVE_ORDERS,
    METRICS,
    MODES,
    PAIR_COUNT,
    PRUNABLE_TOL,
    WHOLE_HEAD,
    curve_order,
    head_name,
)


def add_parsers(sub) -> None:
    p = sub.add_parser("ablate", help="on-demand ablation: prune heads together, patch heads from another image, "
                       "head pairs, pruning curves, patch saliency, or a new image")
    p.add_argument("store", type=Path)
    p.add_argument("--image", type=int, help="image index in the store (vitscope info STORE)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prune", nargs="+", metavar="L:H[:MODE]", help="heads pruned together; MODE "
                      f"{MODES[0]}-{MODES[-1]}, default {WHOLE_HEAD} (whole head); a custom region as JSON: "
                      "'{\"layer\": 3, \"head\": 1, \"region\": "
                      "{\"source\": [0, 0, 4, 4], \"target\": null, \"cls_rows\": false, \"cls_cols\": true}}'")
    what.add_argument("--patch", nargs="+", metavar="L:H", help="activation patching: run --image with these "
                      "heads' outputs (A·V, every token) replaced by their outputs on --source's unpruned pass")
    what.add_argument("--pairs", type=int, nargs="?", const=PAIR_COUNT, metavar="K",
                      help=f"pair interactions of the image's top K heads (default {PAIR_COUNT})")
    what.add_argument("--curve", nargs="*", metavar="ORDER", help=f"progressive pruning in these orders "
                      f"({', '.join(CURVE_ORDERS)}; default all; exact and proxy are the harmful-first orders) "
                      "for --image, --class NAME, or every image; a set also gets each order's prunable count")
    what.add_argument("--saliency", action="store_true", help="patch-ablation saliency of --image")
    what.add_argument("--effects", action="store_true", help="--image's label logit split into each head's direct "
                      "effect, the embedding, the MLPs and the constants, beside each head's total effect")
    what.add_argument("--file", type=Path, help="analyse a new image file (not written into the store)")
    p.add_argument("--source", type=int, metavar="J", help="with --patch: the image whose head outputs are patched in")
    p.add_argument("--class", dest="cls", metavar="NAME", help="with --curve: the class's images")
    p.add_argument("--max-images", type=int, default=CURVE_IMAGES, metavar="N",
                   help=f"with --curve over a set: a seeded sample of at most N images (default {CURVE_IMAGES})")
    p.add_argument("--tol", type=float, default=PRUNABLE_TOL, help="with --curve over a set: heads count as "
                   f"prunable while top-1 stays within TOL of the unpruned (default {PRUNABLE_TOL}, one point)")
    p.add_argument("--block", type=int, default=1, help="with --saliency: occlude BLOCK×BLOCK patches at a time")
    p.add_argument("--label", type=int, help="with --file: the true class index (default: the prediction)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--scheduler", help="run on a Dask worker of this scheduler (e.g. tcp://gpu-host:8786)")
    p.set_defaults(func=cmd_ablate)


def request_from(args: argparse.Namespace, class_names: list[str], labels) -> dict:
    if (args.patch is None) != (args.source is None):
        raise VitscopeError("--patch L:H [L:H ...] needs --source J, the image whose head outputs are patched in"
                            if args.source is None else "--source J is for --patch: add --patch L:H [L:H ...]")
    if args.file is not None:
        return {"kind": "new_image", "path": str(args.file), "label": args.label}
    if args.curve is not None:
        cls = None
        if args.cls is not None:
            from vitscope.classes import match_class

            cls = match_class(args.cls, class_names, sorted({int(c) for c in labels}))[0]
        if args.cls is not None and args.image is not None:
            raise VitscopeError("--curve takes --image or --class, not both")
        for o in args.curve:  # a misspelt order fails before the model loads
            curve_order(o)
        return {"kind": "curve", "image": args.image, "cls": cls, "orders": args.curve or list(CURVE_ORDERS),
                "max_images": args.max_images, "tol": args.tol}
    if args.image is None:
        raise VitscopeError("give --image I (the image's index in the store; vitscope info STORE lists them)")
    if args.prune is not None:
        return {"kind": "prune", "image": args.image, "heads": [parse_head(h) for h in args.prune]}
    if args.patch is not None:
        return {"kind": "patch", "image": args.image, "source": args.source, "heads": parse_patch_heads(args.patch)}
    if args.pairs is not None:
        return {"kind": "pairs", "image": args.image, "k": args.pairs}
    if args.effects:
        return {"kind": "effects", "image": args.image}
    return {"kind": "saliency", "image": args.image, "block": args.block}


def cmd_ablate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from vitscope.service import make_dispatcher
    from vitscope.store import open_store

    ds = open_store(args.store)
    class_names = [str(c) for c in ds["class_name"].values]
    request = request_from(args, class_names, ds["label"].values[ds["valid"].values])
    if request["kind"] == "patch":  # before the model loads, and saying which of the two images it is
        _check_source(args.store, args.source, ds)
    service = make_dispatcher(args.store, args.device, args.scheduler)
    try:
        quick = request["kind"] in ("prune", "patch", "effects")  # a few forwards: no bar
        with tqdm(desc=request["kind"], unit="forward", disable=args.json or quick, leave=False) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = service.submit("cli", request, progress=progress).result()
    finally:
        service.close()
    if "error" in result:
        raise VitscopeError(result["error"])
    print(json.dumps(_plain(result)) if args.json else readable(result, class_names))


def _check_source(store: Path, source: int, ds) -> None:
    from vitscope.store import check_image

    try:
        check_image(store, source, ds["valid"].values.astype(bool), ds["image_id"].values)
    except VitscopeError as e:
        raise VitscopeError(f"--source: {e}") from None


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _top5(top5) -> str:
    return ", ".join(f"{c} {p:.3f}" for c, p in top5)


def _readable_patch(r: dict, class_names: list[str] | None) -> str:
    def names(c: int) -> str:
        return class_names[c] if class_names else str(c)

    i, j, li, lj = r["image"], r["source"], names(r["label"]), names(r["source_label"])
    return "\n".join([
        f"image {i} ({li}) with {', '.join(r['heads'])} patched from image {j} ({lj})",
        f"  P[{li}] {r['baseline_prob']:.4f} → {r['prob']:.4f}  (image {i} → image {i} patched; "
        f"{r['prob'] - r['baseline_prob']:+.4f})",
        f"  P[{lj}] {r['source_prob_before']:.4f} → {r['source_prob']:.4f}  (image {i} → image {i} patched; "
        f"{r['source_baseline_prob']:.4f} in image {j} itself)",
        f"  top-5: {_top5([names(c), p] for c, p in zip(r['topk_idx'], r['topk_prob'], strict=True))}"])


def _readable_effects(r: dict) -> str:
    direct, total = np.asarray(r["direct"]), np.asarray(r["total"])
    c = r["components"]
    H = direct.shape[1]
    lines = [f"image {r['image']} ({r['class']}): the label's logit {r['logit']:.4f} = heads' direct effects "
             f"{direct.sum():+.4f} + embedding {c['embed']:+.4f} + MLPs {sum(c['mlp']):+.4f} + constants "
             f"{c['bias']:+.4f}",
             "direct / total effect of each head in logits (total: the logit lost by pruning it; total − direct acts "
             "through later layers)", "layer" + "".join(f"{f'H{h}':>16}" for h in range(H)) + f"{'MLP':>9}"]
    lines += [f"{i:>5}" + "".join(f"{d:+8.3f}/{t:<+7.3f}" for d, t in zip(direct[i], total[i], strict=True))
              + f"{m:+9.3f}" for i, m in enumerate(c["mlp"])]
    top = np.argsort(-np.abs(total).reshape(-1))[:5]
    lines.append("largest total effects: " + ", ".join(
        f"{head_name(*divmod(int(j), H))} {total.flat[j]:+.3f} (direct {direct.flat[j]:+.3f})" for j in top))
    return "\n".join(lines)


def readable(r: dict, class_names: list[str] | None = None) -> str:
    """A result as the lines a person reads (`class_names`: the store's, for a patch answer's classes)."""
    kind = r["kind"]
    if kind == "patch":
        return _readable_patch(r, class_names)
    if kind == "effects":
        return _readable_effects(r)
    if kind == "prune":
        lines = [f"image {r['image']}, pruned together: {', '.join(r['heads'])}",
                 f"  P[true] {r['baseline_prob']:.4f} → P'[true] {r['prob']:.4f}  (drop {r['drop']:+.4f})",
                 f"  JSD(P, P') {r['jsd']:.4f}"]
        if r["cls_dist"] is not None:
            lines.append(f"  CLS distance {r['cls_dist']:.4f}, patch distance {r['patch_dist']:.4f}")
        else:
            lines.append("  CLS/patch distances: defined only when every head is in one layer")
        if r["sum_of_single_drops"] is not None:
            lines.append(f"  sum of the single-head drops {r['sum_of_single_drops']:+.4f} "
                         f"(joint − sum = {r['drop'] - r['sum_of_single_drops']:+.4f})")
        lines.append(f"  top-5: {_top5(r['top5'])}")
        return "\n".join(lines)
    if kind == "pairs":
        names, inter = r["heads"], np.asarray(r["interaction"])
        lines = [f"image {r['image']}: interaction Δ(i,j) − Δ(i) − Δ(j) of P[true] drops, top {len(names)} heads",
                 " " * 7 + "".join(f"{n:>8}" for n in names)]
        lines += [f"{n:>7}" + "".join(f"{v:+8.4f}" for v in row) for n, row in zip(names, inter, strict=True)]
        lines.append("single drops: " + ", ".join(f"{n} {v:+.4f}" for n, v in zip(names, r["single"], strict=True)))
        return "\n".join(lines)
    if kind == "curve":
        who = f"image {r['image']}" if r["image"] is not None else \
            (f"class {r['cls']}" if r["cls"] is not None else "all images") + (
                f" ({r['images']} images)" if r["images"] == r["of"] else f" (a sample of {r['images']} of {r['of']})")
        what = "P'[true]" if r["y"] == "prob" else "top-1 accuracy"
        orders = list(r["curves"])
        w = max(len(o) for o in orders) + 2
        lines = [f"progressive pruning, {who}: {what} after pruning n heads in each order",
                 f"{'n':>5}" + "".join(f"{o:>{w}}" for o in orders)]
        lines += [f"{n:>5}" + "".join(f"{r['curves'][o][i]:{w}.4f}" for o in orders) for i, n in enumerate(r["steps"])]
        if r.get("prunable") is not None:
            lines.append(f"heads prunable before top-1 ({r['baseline']:.4f} unpruned) drops by more than {r['tol']:g} "
                         "(the first step below, minus one; every step checked):")
            lines += [f"  {o:<{w}}{n}" for o, n in r["prunable"].items()]
        return "\n".join(lines)
    if kind == "saliency":
        d = np.asarray(r["drops"])
        lines = [f"image {r['image']}: drop of P[true] ({r['baseline_prob']:.4f}) when each "
                 f"{r['block']}×{r['block']} patch square is occluded"]
        lines += [" ".join(f"{v:+.3f}" for v in row) for row in d]
        return "\n".join(lines)
    if kind == "new_image":
        a = r["arrays"]
        imp = a["importance"][:, :, WHOLE_HEAD, METRICS.index("prob")]  # P'[true] with each head pruned
        H = imp.shape[1]
        if np.isnan(imp).all():  # a backbone store without labels: no class probabilities, the rest holds
            return "\n".join([f"{r['name']}: no class probabilities (this store's prob basis is none)",
                              "  mean strength entropy per layer: "
                              + " ".join(f"{v:.2f}" for v in a["strength_entropy"].mean(-1))])
        worst = np.argsort(imp.reshape(-1))[:5]
        lines = [f"{r['name']}: predicted {r['top5'][0][0]!r}; label {r['label_name']!r} ({r['label_from']})",
                 f"  top-5: {_top5(r['top5'])}",
                 "  heads whose pruning lowers P[label] most: " + ", ".join(
                     f"{head_name(*divmod(int(j), H))} {imp.reshape(-1)[j]:.3f}" for j in worst),
                 "  mean strength entropy per layer: " + " ".join(f"{v:.2f}" for v in a["strength_entropy"].mean(-1))]
        if r["image_xy"] is not None:
            lines.append(f"  placed in the Image Overview at ({r['image_xy'][0]:.2f}, {r['image_xy'][1]:.2f}) "
                         "by its nearest stored images")
        return "\n".join(lines)
    return json.dumps(_plain(r))
