"""FIGURES: every figure by name, built the same way for a store, an image and a head (what `render` saves).

A `Figure` says what it needs: the views of one image's attention take the `[L, H, P, P]` array (the store keeps
no raw attention; the app gets it from the model), everything else reads the store alone. `build(name, …)`
checks that and returns the HoloViews element.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import holoviews as hv
import numpy as np

from vitscope.app.data import StoreData
from vitscope.errors import VitscopeError
from vitscope.plots import summaries, views
from vitscope.plots.views import Store, store_data


class Target(NamedTuple):
    """What a figure is of: the store's data, an image (None: all images), a head, the image's attention."""

    data: StoreData
    image: int | None
    layer: int
    head: int
    attention: np.ndarray | None


@dataclass(frozen=True)
class Figure:
    """One named figure: `make(target)` → element, and what it shows, in one line."""

    make: Callable[[Target], hv.core.Dimensioned]
    about: str
    needs_image: bool = False
    needs_attention: bool = False


FIGURES: dict[str, Figure] = {
    "overview": Figure(lambda t: views.image_overview(t.data), "images on the tSNE of their head importance"),
    "importance": Figure(lambda t: views.head_importance(t.data, image=t.image),
                         "a metric over every head: the image's, or the mean ± std over all images"),
    "modes": Figure(lambda t: views.mode_bars(t.data, t.layer, t.head, image=t.image),
                    "a head in the six pruning modes"),
    "strength": Figure(lambda t: views.strength_scatter(t.data, image=t.image), "strength entropy of every head"),
    "strength-vector": Figure(lambda t: views.strength_vector(t.data, t.layer, t.head, image=t.image),
                              "a head's k-hop attention strength"),
    "entropy": Figure(lambda t: views.entropy_distribution(t.data, t.layer, t.head, image=t.image),
                      "a head's strength entropy over all images"),
    "pattern-map": Figure(lambda t: views.pattern_map(t.data, layer=t.layer, head=t.head, dynamic=False),
                          "every head of every image on the CLS-attention tSNE, datashaded by layer"),
    "binary-map": Figure(lambda t: views.binary_map(t.data, t.image, t.layer, t.head), "a head's binarised map (store)",
                         needs_image=True),
    "heatmap": Figure(lambda t: views.attention_heatmap(t.attention, t.layer, t.head, t.data.num_prefix),
                      "a head's attention matrix on an image", needs_image=True, needs_attention=True),
    "two-axes": Figure(lambda t: views.two_axes(t.attention, t.layer, t.head, t.data.num_prefix, t.data.top),
                       "a head's attention above the store's cut as source→target lines", needs_image=True,
                       needs_attention=True),
    "masks": Figure(lambda t: views.masks(t.data, t.attention, t.image, t.layer, t.head, binarise=False),
                    "the image under CLS's source and target masks, graded as in the app (CLS has no row in "
                    "the binarised map)", needs_image=True, needs_attention=True),
    "importance-matrix": Figure(lambda t: summaries.importance_matrix(t.data),
                                "layer × head mean importance with the head pruned"),
    "layer-trends": Figure(lambda t: summaries.layer_trends(t.data),
                           "mean attention distance and strength entropy per layer"),
    "pattern-kinds": Figure(lambda t: summaries.pattern_kind_matrix(t.data),
                            "head kinds and pattern labels per layer"),
    "proxy-vs-exact": Figure(lambda t: summaries.proxy_vs_exact(t.data),
                             "gradient proxy against exact whole-head pruning per head"),
}


def build(name: str, store: Store, image: int | None = None, layer: int = 0, head: int = 0,
          attention: np.ndarray | None = None) -> hv.core.Dimensioned:
    """The element of figure `name` for a store (path or StoreData), image, head and, where it needs one, the
    image's attention [L, H, P, P]; a missing input or an unknown name is one line (VitscopeError)."""
    if name not in FIGURES:
        raise VitscopeError(f"no figure {name!r}: the figures are {', '.join(FIGURES)}")
    fig, data = FIGURES[name], store_data(store)
    if not (0 <= layer < data.layers and 0 <= head < data.heads):
        raise VitscopeError(f"no head L{layer}H{head}: this store has layers 0..{data.layers - 1} and heads "
                            f"0..{data.heads - 1}")
    if fig.needs_image and image is None:
        raise VitscopeError(f"figure {name!r} shows one image: give one")
    if image is not None:
        image = data.check_image(int(image))
    if fig.needs_attention:
        want = (data.layers, data.heads, data.tokens, data.tokens)
        if attention is None or np.shape(attention) != want:
            got = "none" if attention is None else str(np.shape(attention))
            raise VitscopeError(f"figure {name!r} needs the image's attention {want} (the store keeps none; "
                                f"`Service.attention` recomputes it), got {got}")
    return fig.make(Target(data, image, layer, head, attention))
