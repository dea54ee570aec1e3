"""The figure registry: every figure vitscope draws for print, by name, with what it shows and what it needs. The
notebook, `vitscope figure`, the app's "save figure" and the report all list figures from here; `vitscope.plots`
draws them.

A figure of one image's attention takes the `[L, H, P, P]` array (the store keeps no raw attention; it comes from
the model), a figure of its input attributions takes `Service.explain`'s dict (its patch maps and faithfulness
curves, wherever they were computed), every other figure reads the store alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vitscope.errors import VitscopeError
from vitscope.readout.effects import EFFECTS_MISSING
from vitscope.readout.store_data import Store, StoreData, store_data


@dataclass(frozen=True)
class FigureSpec:
    """What one figure shows, in one line, and what it needs besides the store."""

    about: str
    needs_image: bool = False
    needs_attention: bool = False
    needs_explain: bool = False  # the image's explanation (`Service.explain`): it needs P[target], so a class basis
    needs_effects: bool = False  # the heads' direct and total effects, which stores built before schema v5 lack


# The views first (the order the app's "save figure" lists them in), then the store summaries.
FIGURES: dict[str, FigureSpec] = {
    "importance": FigureSpec("a metric over every head: the image's, or the mean ± std over all images"),
    "modes": FigureSpec("a head in the six pruning modes"),
    "strength": FigureSpec("strength entropy of every head"),
    "strength-vector": FigureSpec("a head's k-hop attention strength"),
    "entropy": FigureSpec("a head's strength entropy over all images"),
    "overview": FigureSpec("images on the tSNE of their head importance"),
    "pattern-map": FigureSpec("every head of every image on the CLS-attention tSNE, datashaded by layer"),
    "binary-map": FigureSpec("a head's binarised map (store)", needs_image=True),
    "heatmap": FigureSpec("a head's attention matrix on an image", needs_image=True, needs_attention=True),
    "two-axes": FigureSpec("a head's attention above the store's cut as source→target lines", needs_image=True,
                           needs_attention=True),
    "masks": FigureSpec("the image under CLS's source and target masks, graded as in the app (CLS has no row in the "
                        "binarised map)", needs_image=True, needs_attention=True),
    "explain-maps": FigureSpec("the image's four patch maps (attention, rollout, grad_rollout, occlusion) over it, "
                               "each on its own scale", needs_image=True, needs_explain=True),
    "explain-curves": FigureSpec("the image's faithfulness curves: P[target] as patches are removed in each map's "
                                 "order, both directions, AUC in the legend", needs_image=True, needs_explain=True),
    "importance-matrix": FigureSpec("layer × head mean importance with the head pruned"),
    "layer-trends": FigureSpec("mean attention distance and strength entropy per layer"),
    "pattern-kinds": FigureSpec("head kinds and pattern labels per layer"),
    "proxy-vs-exact": FigureSpec("gradient proxy against exact whole-head pruning per head"),
    "direct-vs-total": FigureSpec("every head's direct effect on the label's logit against its total effect (pruned "
                                  "whole): the image's, or the mean over all images; off the diagonal it acts "
                                  "through later layers", needs_effects=True),
    "proxy-table": FigureSpec("each proxy's Spearman ρ with exact whole-head pruning: the median per image with its "
                              "IQR, ρ of the means, the one that ranks heads best starred", needs_effects=True),
}


NO_EFFECTS = f"which are {EFFECTS_MISSING}"  # a figure of the heads' effects on an older store


class Target(NamedTuple):
    """What a figure is of: the store's data, an image (None: all images), a head, the image's attention."""

    data: StoreData
    image: int | None
    layer: int
    head: int
    attention: np.ndarray | None
    explain: dict | None = None


def target(name: str, store: Store, image: int | None = None, layer: int = 0, head: int = 0,
           attention: np.ndarray | None = None, explain: dict | None = None) -> Target:
    """The checked inputs of figure `name`: an unknown name, head or image, or a missing image, attention or
    explanation, is one line (VitscopeError)."""
    if name not in FIGURES:
        raise VitscopeError(f"no figure {name!r}: the figures are {', '.join(FIGURES)}")
    spec, data = FIGURES[name], store_data(store)
    if not (0 <= layer < data.layers and 0 <= head < data.heads):
        raise VitscopeError(f"no head L{layer}H{head}: this store has layers 0..{data.layers - 1} and heads "
                            f"0..{data.heads - 1}")
    if spec.needs_image and image is None:
        raise VitscopeError(f"figure {name!r} shows one image: give one")
    if image is not None:
        image = data.check_image(int(image))
    if spec.needs_attention:
        want = (data.layers, data.heads, data.tokens, data.tokens)
        if attention is None or np.shape(attention) != want:
            got = "none" if attention is None else str(np.shape(attention))
            raise VitscopeError(f"figure {name!r} needs the image's attention {want} (the store keeps none; "
                                f"`Service.attention` recomputes it), got {got}")
    if spec.needs_explain:
        check_explain(name, explain, image)
    if spec.needs_effects and not data.has_effects:
        raise VitscopeError(f"figure {name!r} needs the heads' effects, {NO_EFFECTS}")
    return Target(data, image, layer, head, attention, explain)


def check_explain(name: str, explain: object, image: int | None) -> None:
    """An explanation of the figure's image: a dict with its patch maps (from `Service.explain`, or read back)."""
    if not isinstance(explain, dict) or "maps" not in explain or "grid" not in explain:
        raise VitscopeError(f"figure {name!r} needs the image's explanation (`Service.explain`: its patch maps and "
                            f"faithfulness curves), got {'none' if explain is None else type(explain).__name__}")
    if image is not None and explain.get("image", image) != image:
        raise VitscopeError(f"figure {name!r} of image {image} was given the explanation of image {explain['image']}")


Renderer = Callable[[str, str, Target], bytes]  # (figure name, format, checked target) → the print file's content
