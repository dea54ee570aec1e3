"""`Head`: one attention head and what of it is pruned, the one value heads travel as between the CLI, the
service and the app; `parse_head` reads every form a person types or a JSON request holds.

    "3:1"  "3:1:5"  "3x1"                        LAYER:HEAD[:MODE] (x for : as `export --heads` always took)
    [3, 1]  [3, 1, 5]                            a list (JSON)
    {"layer": 3, "head": 1, "mode": 5}           or with "region": {"source", "target", "cls_rows", "cls_cols"}
    '{"layer": 3, ...}'                          the same object as JSON text (how the CLI takes a region)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitscope.errors import VitscopeError
from vitscope.vocab import WHOLE_HEAD, head_name

Rect = tuple[int, int, int, int]  # (row0, col0, row1, col1) on the patch grid, half-open
REGION_FIELDS = ("source", "target", "cls_rows", "cls_cols")


@dataclass(frozen=True)
class Region:
    """A custom region of one head's attention A to zero (rows = source/query tokens).

    The source × target block of patches (a missing rectangle means all patches; no rectangle at
    all means no block), plus the prefix-token rows (what CLS takes in) and columns (what the
    patches take from CLS).
    """

    source: Rect | None = None
    target: Rect | None = None
    cls_rows: bool = False
    cls_cols: bool = False


@dataclass(frozen=True)
class Head:
    """One head and what of its attention is zeroed: a pruning mode (WHOLE_HEAD = all of A) or a Region."""

    layer: int
    head: int
    mode: int | Region = WHOLE_HEAD

    @property
    def name(self) -> str:
        """L3H7: the head alone, as every view and table names it."""
        return head_name(self.layer, self.head)

    @property
    def label(self) -> str:
        """L3H7 (mode 5) or L3H7 (region): the head and what of it is pruned."""
        what = f"mode {self.mode}" if isinstance(self.mode, int) else "region"
        return f"{self.name} ({what})"


_TEXT = re.compile(r"\s*(\d+)\s*[:x]\s*(\d+)\s*(?::\s*(\d+)\s*)?")


def parse_head(item: object, *, modes: bool = True) -> Head:
    """Any form in this module's docstring (or a Head) → Head; one line for anything else.

    `modes=False` takes a head alone (LAYER:HEAD, [layer, head]), as `export --heads` does."""
    if isinstance(item, Head):
        return item
    if isinstance(item, str) and item.lstrip().startswith("{") and modes:
        try:
            item = json.loads(item)
        except ValueError as e:
            raise VitscopeError(f"bad head {item!r}: not JSON ({e})") from None
    elif isinstance(item, str):
        m = _TEXT.fullmatch(item)
        if not m or (m[3] is not None and not modes):
            raise VitscopeError(f"bad head {item!r}: write " + ("LAYER:HEAD or LAYER:HEAD:MODE, e.g. 3:1 or 3:1:5"
                                                                  if modes else "LAYER:HEAD, e.g. 3:7"))
        return Head(int(m[1]), int(m[2]), WHOLE_HEAD if m[3] is None else int(m[3]))
    if isinstance(item, list | tuple) and len(item) in ((2, 3) if modes else (2,)) and all(
            isinstance(v, int | np.integer) for v in item):
        return Head(*(int(v) for v in item))
    if modes and isinstance(item, dict) and isinstance(item.get("layer"), int) and isinstance(item.get("head"), int):
        region = item.get("region")
        if region is None:
            return Head(item["layer"], item["head"], int(item.get("mode", WHOLE_HEAD)))
        unknown = set(region) - set(REGION_FIELDS)
        if unknown:
            raise VitscopeError(f"unknown region field {sorted(unknown)[0]!r}: use {', '.join(REGION_FIELDS)}")
        return Head(item["layer"], item["head"], Region(
            source=_rect(region.get("source")), target=_rect(region.get("target")),
            cls_rows=bool(region.get("cls_rows", False)), cls_cols=bool(region.get("cls_cols", False))))
    if not modes:
        raise VitscopeError(f"bad head {item!r}: write LAYER:HEAD, e.g. 3:7")
    raise VitscopeError(f"bad head {item!r}: give 'LAYER:HEAD[:MODE]', [layer, head, mode] or "
                        "{'layer': L, 'head': H, 'mode': M | 'region': {...}}")


def parse_heads(items: object) -> list[Head]:
    """One head or a list of them, in any form `parse_head` reads."""
    if isinstance(items, str | dict | Head) or not isinstance(items, Sequence):
        items = [items]
    return [parse_head(h) for h in items]


def parse_patch_heads(items: object) -> list[Head]:
    """Heads to patch, whole heads only (LAYER:HEAD, [layer, head] or a Head of the whole head): patching replaces
    a head's whole output, so a head written with a mode or region is one line saying so."""
    if isinstance(items, str | dict | Head) or not isinstance(items, Sequence):
        items = [items]
    return [_whole_head(item) for item in items]


def _whole_head(item: object) -> Head:
    try:
        h = parse_head(item, modes=False)
        if h.mode == WHOLE_HEAD:
            return h
    except VitscopeError as e:
        try:
            h = parse_head(item)  # it reads with a mode or region
        except VitscopeError:
            raise e from None  # it does not read at all: the line that asks for LAYER:HEAD
    raise VitscopeError(f"{h.name} given with a mode or region: patching replaces a head's whole output, so give "
                        f"{h.layer}:{h.head} alone")


def _rect(value) -> Rect | None:
    if value is None:
        return None
    if not (isinstance(value, list | tuple) and len(value) == 4 and all(isinstance(v, int) for v in value)):
        raise VitscopeError(f"bad rectangle {value!r}: give [row0, col0, row1, col1] (half-open) on the patch grid")
    return tuple(value)


def head_dict(h: Head) -> dict:
    """Head → the JSON form `parse_head` reads back."""
    if isinstance(h.mode, Region):
        r = h.mode
        return {"layer": h.layer, "head": h.head, "region": {
            "source": None if r.source is None else list(r.source), "target": None if r.target is None else
            list(r.target), "cls_rows": r.cls_rows, "cls_cols": r.cls_cols}}
    return {"layer": h.layer, "head": h.head, "mode": h.mode}


def top_heads(pruned_prob: np.ndarray, k: int) -> list[Head]:
    """The k heads whose whole-head pruning lowers P[true] most: `pruned_prob` [L, H] is P'[true] per head."""
    H = pruned_prob.shape[1]
    return [Head(*divmod(int(j), H)) for j in np.argsort(pruned_prob.reshape(-1), kind="stable")[:k]]


def prune_answer(image: int, heads: Sequence[Head], prob: float, baseline_prob: float, jsd: float,
                 cls_dist: float | None, patch_dist: float | None, top5: list[list], single_drops: list[float] | None,
                 **extra) -> dict:
    """The answer to a prune request, plain data: the service's after a forward, or the store's own numbers for one
    head in a stored mode (`extra`: `stored=True`). `top5` is [[class name, probability], …]; `single_drops` each
    head's own drop of P[true] in its mode (None when a head has a custom region)."""
    return {"kind": "prune", "image": int(image), "heads": [h.label for h in heads], "prob": prob,
            "baseline_prob": baseline_prob, "drop": baseline_prob - prob, "jsd": jsd, "cls_dist": cls_dist,
            "patch_dist": patch_dist, "top5": top5, "single_drops": single_drops,
            "sum_of_single_drops": None if single_drops is None else float(sum(single_drops)), **extra}
