"""The one set of colours of the app, the notebook figures and print, safe for readers with a colour-vision
deficiency and in grey: Okabe–Ito for categories, colorcet's protanopic/deuteranopic-safe ramps for values and layers.

Hex strings only, so every consumer (Bokeh, HoloViews, matplotlib, numpy images) reads the same values.
"""

from __future__ import annotations

import colorcet
import numpy as np

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
BLUE, ORANGE, GREEN, PURPLE, SKY, VERMILLION, YELLOW, BLACK = OKABE_ITO

SELECTED = VERMILLION  # the selected image, head, token and threshold, everywhere
CORRECT, WRONG = GREEN, VERMILLION  # unpruned top-1 right / wrong
CLS, PATCH = BLUE, ORANGE  # CLS-related vs patch→patch attention (the paper's blue / orange)
PROXY = PURPLE  # the gradient proxy, wherever it is drawn beside exact pruning
PIN_COLOURS = (PURPLE, SKY, GREEN, BLACK)  # heads pinned beside the selected one, in pin order
MODELS = (BLUE, ORANGE)  # the two models of a comparison
NO_VALUE = "#cccccc"  # a point without a value (NaN)
# The input attributions (vocab.EXPLAIN_METHODS), wherever their curves are drawn side by side; occlusion, measured
# by the model itself, black like exact pruning beside the proxies
MAP_COLOURS = {"attention": BLUE, "rollout": ORANGE, "grad_rollout": GREEN, "occlusion": BLACK}

_LINEAR = colorcet.b_linear_protanopic_deuteranopic_kbjyw_5_95_c25  # dark blue → yellow → white
# Values in [0, 1] (P[true], attention): the ramp without its near-black and near-white ends, so both ends stay
# visible on a white page.
VALUE_RAMP = tuple(_LINEAR[int(round(i))] for i in np.linspace(0.1, 0.85, 256) * (len(_LINEAR) - 1))
DIVERGING = tuple(colorcet.b_diverging_protanopic_deuteranopic_bwy_60_95_c32)  # signed values: blue − / yellow +


def layer_colours(layers: int) -> list[str]:
    """One colour per layer, early dark blue → late yellow: the value ramp's middle, so no layer is near white."""
    at = np.linspace(0.15, 0.85, max(layers, 1)) * (len(_LINEAR) - 1)
    return [_LINEAR[int(round(i))] for i in at][:layers]


def class_colours(classes: int) -> list[str]:
    """Okabe–Ito up to 8 classes, then glasbey (distinct, not all tellable apart: many classes need a legend)."""
    palette = OKABE_ITO if classes <= len(OKABE_ITO) else colorcet.b_glasbey_category10
    return [palette[i % len(palette)] for i in range(classes)]


def value_colours(values: np.ndarray) -> np.ndarray:
    """Hex colours of values in [0, 1] along VALUE_RAMP (NaN → NO_VALUE)."""
    idx = np.clip(np.nan_to_num(values, nan=0.0), 0, 1) * (len(VALUE_RAMP) - 1)
    return np.where(np.isfinite(values), np.asarray(VALUE_RAMP)[idx.round().astype(int)], NO_VALUE)


def rgb(colour: str) -> np.ndarray:
    """'#rrggbb' → float [3] in [0, 1]."""
    c = colour.lstrip("#")
    return np.array([int(c[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.float64) / 255.0
