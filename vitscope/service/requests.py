"""Service requests are plain data (dicts of numbers, strings, lists and `Head` values), so they cross processes
and Dask; a head is a `vitscope.heads.Head` or any form `parse_head` reads.

    {"kind": "prune", "image": 3, "heads": ["2:0", "5:1:5", {"layer": 4, "head": 2,
        "region": {"source": [0, 0, 4, 4], "target": null, "cls_rows": false, "cls_cols": true}}]}
    {"kind": "patch", "image": 3, "source": 7, "heads": ["2:0", "5:1"]}  (activation patching: image 3 run with
        each head's output A·V, all tokens, replaced by that head's output on image 7's unpruned pass; whole heads)
    {"kind": "pairs", "image": 3, "k": 12}              {"kind": "saliency", "image": 3, "block": 2}
    {"kind": "effects", "image": 3}  (the label logit's decomposition: heads' direct effects, embedding, MLPs, bias)
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
KINDS = ("prune", "patch", "pairs", "curve", "saliency", "new_image", "attention", "explain", "explain_set", "effects")
NEEDS_IMAGE = ("prune", "patch", "pairs", "saliency", "attention", "explain", "effects")
# requests answered in P[true] or the label's logit
NEEDS_CLASSES = ("prune", "patch", "pairs", "curve", "saliency", "explain", "explain_set", "effects")
NO_BASIS_WHY = ("unavailable: this store's model has no classifier and its images no usable labels, so P[true] and "
                "JSD are undefined (prob basis: none); its cls_dist and patch_dist are in the store")


def check(request: object) -> str:
    """The request's kind, after checking the fields every kind needs; one line otherwise."""
    if not isinstance(request, dict) or request.get("kind") not in KINDS:
        kind = request.get("kind") if isinstance(request, dict) else type(request).__name__
        raise VitscopeError(f"unknown request {kind!r}: kinds are {', '.join(KINDS)}")
    kind = request["kind"]
    if kind in NEEDS_IMAGE and not isinstance(request.get("image"), int):
        article = "an" if kind[0] in "aeiou" else "a"  # an attention, explain or effects request
        raise VitscopeError(f"{article} {kind} request needs an integer 'image' (the image's index in the store)")
    if kind == "prune" and not request.get("heads"):
        raise VitscopeError("a prune request needs 'heads': at least one LAYER:HEAD[:MODE]")
    if kind == "patch" and not request.get("heads"):
        raise VitscopeError("a patch request needs 'heads': at least one LAYER:HEAD")
    if kind == "patch" and not isinstance(request.get("source"), int):
        raise VitscopeError("a patch request needs an integer 'source' (the index in the store of the image whose "
                            "head outputs are patched in)")
    if kind == "attention" and request.get("layer") is not None and not isinstance(request["layer"], int):
        raise VitscopeError("an attention request's 'layer' must be an integer (or absent: every layer)")
    if kind == "explain_set" and not isinstance(request.get("images"), int):
        raise VitscopeError("an explain_set request needs an integer 'images' (how many to sample)")
    if kind == "new_image" and (request.get("path") is None) == (request.get("data") is None):
        raise VitscopeError("a new_image request needs a 'path' or the file's 'data' (one of them)")
    return kind
