"""Service requests are plain data (dicts of numbers, strings and lists), so they cross processes and Dask.

    {"kind": "prune", "image": 3, "heads": ["2:0", "5:1:5", {"layer": 4, "head": 2,
        "region": {"source": [0, 0, 4, 4], "target": null, "cls_rows": false, "cls_cols": true}}]}
    {"kind": "pairs", "image": 3, "k": 12}              {"kind": "saliency", "image": 3, "block": 2}
    {"kind": "curve", "image": 3 | null, "cls": 7 | null, "orders": ["exact", "proxy", "random"]}
    {"kind": "new_image", "path": "photo.jpg"}  (or "data": the file's bytes)   {"kind": "attention", "image": 3}
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from vitscope.engine.prune import HeadPrune, Region, parse_prune
from vitscope.errors import VitscopeError

KINDS = ("prune", "pairs", "curve", "saliency", "new_image", "attention")
NEEDS_IMAGE = ("prune", "pairs", "saliency", "attention")


def check(request: object) -> str:
    """The request's kind, after checking the fields every kind needs; one line otherwise."""
    if not isinstance(request, dict) or request.get("kind") not in KINDS:
        kind = request.get("kind") if isinstance(request, dict) else type(request).__name__
        raise VitscopeError(f"unknown request {kind!r}: kinds are {', '.join(KINDS)}")
    kind = request["kind"]
    if kind in NEEDS_IMAGE and not isinstance(request.get("image"), int):
        raise VitscopeError(f"a {kind} request needs an integer 'image' (the image's index in the store)")
    if kind == "prune" and not request.get("heads"):
        raise VitscopeError("a prune request needs 'heads': at least one LAYER:HEAD[:MODE]")
    if kind == "new_image" and (request.get("path") is None) == (request.get("data") is None):
        raise VitscopeError("a new_image request needs a 'path' or the file's 'data' (one of them)")
    return kind


def parse_head(item: object) -> HeadPrune:
    """'L:H[:MODE]', [L, H(, MODE)] or {"layer", "head", "mode" | "region"} → HeadPrune."""
    if isinstance(item, HeadPrune):
        return item
    if isinstance(item, str) and item.lstrip().startswith("{"):  # the JSON form, as the CLI takes a region
        try:
            item = json.loads(item)
        except ValueError as e:
            raise VitscopeError(f"bad head {item!r}: not JSON ({e})") from None
    elif isinstance(item, str):
        return parse_prune(item)
    if isinstance(item, list | tuple) and len(item) in (2, 3) and all(isinstance(v, int) for v in item):
        return HeadPrune(*item)
    if isinstance(item, dict) and isinstance(item.get("layer"), int) and isinstance(item.get("head"), int):
        region = item.get("region")
        if region is None:
            return HeadPrune(item["layer"], item["head"], int(item.get("mode", 1)))
        unknown = set(region) - {"source", "target", "cls_rows", "cls_cols"}
        if unknown:
            raise VitscopeError(f"unknown region field {sorted(unknown)[0]!r}: use source, target, cls_rows, cls_cols")
        return HeadPrune(item["layer"], item["head"], Region(
            source=_rect(region.get("source")), target=_rect(region.get("target")),
            cls_rows=bool(region.get("cls_rows", False)), cls_cols=bool(region.get("cls_cols", False))))
    raise VitscopeError(f"bad head {item!r}: give 'LAYER:HEAD[:MODE]', [layer, head, mode] or "
                        "{'layer': L, 'head': H, 'mode': M | 'region': {...}}")


def parse_heads(items: Sequence[object]) -> list[HeadPrune]:
    if isinstance(items, str | dict) or not isinstance(items, Sequence):
        items = [items]
    return [parse_head(h) for h in items]


def _rect(value) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    if not (isinstance(value, list | tuple) and len(value) == 4 and all(isinstance(v, int) for v in value)):
        raise VitscopeError(f"bad rectangle {value!r}: give [row0, col0, row1, col1] (half-open) on the patch grid")
    return tuple(value)


def head_dict(h: HeadPrune) -> dict:
    """HeadPrune → the plain-data form parse_head reads back."""
    if isinstance(h.mode, Region):
        r = h.mode
        return {"layer": h.layer, "head": h.head, "region": {
            "source": None if r.source is None else list(r.source), "target": None if r.target is None else
            list(r.target), "cls_rows": r.cls_rows, "cls_cols": r.cls_cols}}
    return {"layer": h.layer, "head": h.head, "mode": h.mode}
