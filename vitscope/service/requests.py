"""Service requests are plain data (dicts of numbers, strings, lists and `Head` values), so they cross processes
and Dask; a head is a `vitscope.heads.Head` or any form `parse_head` reads.

    {"kind": "prune", "image": 3, "heads": ["2:0", "5:1:5", {"layer": 4, "head": 2,
        "region": {"source": [0, 0, 4, 4], "target": null, "cls_rows": false, "cls_cols": true}}]}
    {"kind": "pairs", "image": 3, "k": 12}              {"kind": "saliency", "image": 3, "block": 2}
    {"kind": "curve", "image": 3 | null, "cls": 7 | null, "orders": ["exact-harmful-first", "exact-harmless-first",
        "proxy-harmful-first", "proxy-harmless-first", "random"] ("exact", "proxy": the harmful-first ones),
        "steps": [0, 6, 12], "max_images": 256, "tol": 0.01}
    {"kind": "new_image", "path": "photo.jpg"}  (or "data": the file's bytes)   {"kind": "attention", "image": 3}
    {"kind": "attention", "image": 3, "layer": 5}  (that layer's heads only: the blocks up to it are run)
    {"kind": "explain", "image": 3, "methods": ["rollout", "occlusion"] (absent: all four)}
    {"kind": "explain_set", "images": 50, "cls": 7 | null, "seed": 0, "methods": [...]}
"""

from __future__ import annotations

from vitscope.errors import VitscopeError
from vitscope.heads import head_dict, parse_head, parse_heads

__all__ = ["KINDS", "NEEDS_IMAGE", "check", "head_dict", "parse_head", "parse_heads"]  # heads: vitscope.heads
KINDS = ("prune", "pairs", "curve", "saliency", "new_image", "attention", "explain", "explain_set")
NEEDS_IMAGE = ("prune", "pairs", "saliency", "attention", "explain")
NEEDS_CLASSES = ("prune", "pairs", "curve", "saliency", "explain", "explain_set")  # requests answered in P[true]
NO_BASIS_WHY = ("unavailable: this store's model has no classifier and its images no usable labels, so P[true] and "
                "JSD are undefined (prob basis: none); its cls_dist and patch_dist are in the store")


def check(request: object) -> str:
    """The request's kind, after checking the fields every kind needs; one line otherwise."""
    if not isinstance(request, dict) or request.get("kind") not in KINDS:
        kind = request.get("kind") if isinstance(request, dict) else type(request).__name__
        raise VitscopeError(f"unknown request {kind!r}: kinds are {', '.join(KINDS)}")
    kind = request["kind"]
    if kind in NEEDS_IMAGE and not isinstance(request.get("image"), int):
        article = "an" if kind[0] in "aeiou" else "a"  # an attention or explain request
        raise VitscopeError(f"{article} {kind} request needs an integer 'image' (the image's index in the store)")
    if kind == "prune" and not request.get("heads"):
        raise VitscopeError("a prune request needs 'heads': at least one LAYER:HEAD[:MODE]")
    if kind == "attention" and request.get("layer") is not None and not isinstance(request["layer"], int):
        raise VitscopeError("an attention request's 'layer' must be an integer (or absent: every layer)")
    if kind == "explain_set" and not isinstance(request.get("images"), int):
        raise VitscopeError("an explain_set request needs an integer 'images' (how many to sample)")
    if kind == "new_image" and (request.get("path") is None) == (request.get("data") is None):
        raise VitscopeError("a new_image request needs a 'path' or the file's 'data' (one of them)")
    return kind
