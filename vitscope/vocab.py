"""The names vitscope uses everywhere: metrics, pruning modes, patterns, offsets, head kinds, layouts.

One place, so that adding a metric or a mode is a one-line change here; the engine, the
store, the build, the CLI, the summary and the app import these instead of spelling
`6`, `range(1, 6)` or metric names again.
"""

from __future__ import annotations

from vitscope.errors import VitscopeError

METRICS = ("prob", "jsd", "cls_dist", "patch_dist")
METRIC_LABELS = {
    "prob": "P'[true label]",
    "jsd": "JSD(P, P')",
    "cls_dist": "CLS distance",
    "patch_dist": "patch distance",
}
DEFAULT_METRIC = "prob"  # what the app, `export` and the Image Overview's layout show unless told otherwise

# 0 = the unpruned model; 1..5 prune a region of one head's attention. A mode is also its position on the store's
# `mode` axis, so in-memory numpy arrays index it directly.
MODES = (0, 1, 2, 3, 4, 5)
ABLATION_MODES = MODES[1:]
WHOLE_HEAD = 1  # the mode that prunes all of a head's attention: the importance of the head itself
MODE_NAMES = {
    0: "none (original model)",
    1: "whole head",
    2: "CLS→CLS",
    3: "CLS↔patches",
    4: "all CLS-related",
    5: "patches→patches",
}

BASE_PATTERNS = ("diagonal", "horizontal", "vertical", "block")  # the paper's four, each scored (pattern_score)
PATTERNS = (*BASE_PATTERNS, "none")  # the labels: a base pattern, or none that explains the map beyond chance
OFFSETS = ("self", "left", "right", "up", "down", "counter")

# What a head is across images (head_kind): its binarised maps agree across images (positional: the same
# patches whatever the content), differ (content), or in between (mixed); sink: most of its maps' 1s on the same
# few target tokens in every image (analysis/sinks.py). Appended: a code keeps its meaning in older stores.
HEAD_KINDS = ("positional", "content", "mixed", "sink")
SINK_RANKS = 4  # tokens kept per image and layer as sinks / high-norm tokens; a sink head's 1s sit on at most as many
# A sink head puts at least this share of its 1s (pooled over all images) on its SINK_RANKS most-hit targets. On the
# real ViT-Ti (200 photos) layers 9–11 put 93–100 % there, layer 8 (where the sinks take over) 71–81 %, layers 0–7
# at most 20 %: 0.9 leaves a margin on both sides, where 0.8 would split layer 8 by the sample of photos.
SINK_SHARE = 0.9

# `vitscope compare`: a head paired at this similarity or more has a good partner in the other model (compare.py
# lowers it to the outlier fence of the pairs where the two models differ throughout). Measured on the demo model
# (1000 images) against a copy with every weight perturbed by 10 % of its tensor's spread (200 images): each head
# pairs with itself, at 0.92 or more (median 0.996); each head's most similar *other* head of the same model scores
# 0.79–0.95 (median 0.87, 20 of 24 below 0.9).
GOOD_PARTNER = 0.9

# What `prob` and `jsd` are computed from (the store's `prob_basis`): the model's classifier, a backbone's linear
# probe, or nothing (a backbone without labels: NaN).
CLASSIFIER, LINEAR_PROBE, NO_BASIS = "classifier", "linear probe", "none"
PROB_BASES = (CLASSIFIER, LINEAR_PROBE, NO_BASIS)

PRECISIONS = ("float32", "tf32", "bfloat16")  # what the engine computes in (tf32: float32 with TF32 matmuls)

# Cheap per-head scores set against exact pruning's `total_effect` (analysis/proxy.py: proxy_table), in the order a
# tie between them is broken: the gradient proxy of Michel et al. 2019, the head's direct logit attribution, the norm
# of its output at the class token (Kobayashi et al. 2020), the class token's attention on the patches, and how far
# leaving the head out moves the rollout map (analysis/explain.py: rollout_impact).
PROXIES = ("gradient", "direct", "output_norm", "cls_patch_mass", "rollout_impact")
PROXY_LABELS = {
    "gradient": "gradient |∂CE/∂gate|",
    "direct": "direct logit attribution",
    "output_norm": "output norm ‖c‖",
    "cls_patch_mass": "CLS→patches attention",
    "rollout_impact": "rollout impact",
}

PAIR_COUNT = 12  # head pairs: the image's top heads whose interactions are computed unless told otherwise
# The orders a pruning curve removes heads in, each named by its direction. exact: by the head's mean P'[true] when
# pruned alone (mode 1, from the store); harmful-first takes the lowest first, harmless-first the highest first.
# proxy: by the mean gradient proxy |dCE/dgate|; harmful-first the largest first, harmless-first the smallest first.
# Ties keep head order (layer, then head) in both directions. Harmless-first answers Michel et al. 2019's question:
# how many heads can go before accuracy drops.
CURVE_ORDERS = ("exact-harmful-first", "exact-harmless-first", "proxy-harmful-first", "proxy-harmless-first", "random")
CURVE_ALIASES = {"exact": "exact-harmful-first", "proxy": "proxy-harmful-first"}  # the names before the directions
CURVE_IMAGES = 256  # a set's pruning curve runs on at most this many images (a seeded sample)
PRUNABLE_TOL = 0.01  # a set curve's prunable count: heads pruned while top-1 stays within this of the unpruned


def curve_order(name: object) -> str:
    """An order's canonical name (an old alias → its harmful-first order); one line listing the names otherwise."""
    if isinstance(name, str) and (name in CURVE_ORDERS or name in CURVE_ALIASES):
        return CURVE_ALIASES.get(name, name)
    raise VitscopeError(f"unknown pruning order {name!r}: choose from {', '.join(CURVE_ORDERS)} "
                        f"({', '.join(f'{a} = {o}' for a, o in CURVE_ALIASES.items())})")

# Input attributions (`vitscope explain`): the patch maps, and the two orders a faithfulness curve removes patches in
EXPLAIN_METHODS = ("attention", "rollout", "grad_rollout", "occlusion")
EXPLAIN_DIRECTIONS = ("most_relevant_first", "least_relevant_first")
STORED_MAPS = EXPLAIN_METHODS[:3]  # the maps a build keeps per image (occlusion needs a forward per patch)
EXPLAIN_IMAGES = 8  # the report's seeded sample for the faithfulness benchmark (every image runs hundreds of forwards)
EXPLAIN_SEED = 0  # and its seed (the sample's and the bootstrap's)


def explain_methods(names: object) -> tuple[str, ...]:
    """The maps asked for, in EXPLAIN_METHODS order (None: all); one line naming the valid ones otherwise."""
    if names is None:
        return EXPLAIN_METHODS
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in EXPLAIN_METHODS]
    if bad or not names:
        raise VitscopeError(f"unknown explanation method {bad[0] if bad else None!r}: choose from "
                            f"{', '.join(EXPLAIN_METHODS)}")
    return tuple(m for m in EXPLAIN_METHODS if m in names)


# A head's effects on the label's logit (`engine.effects`, `total_effect` from pruning) and the cheap proxies a store
# keeps beside them, each [image, layer, head]: the proxies are ranked against `total_effect` (`analysis.proxy`).
HEAD_EFFECTS = ("direct_effect", "total_effect", "output_norm", "rollout_impact")

FIGURE_FORMATS = ("svg", "pdf", "png")  # what `vitscope figure`, the app's "save figure" and plots.render write


def curve_parts(order: str) -> tuple[str, str]:
    """A canonical order's (criterion, direction): ('exact', 'harmless-first'), …; ('random', '')."""
    criterion, _, direction = order.partition("-")
    return criterion, direction


HEAD_LAYOUTS = ("cls", "patch")  # the Attention Pattern View's two head layouts (head_xy_cls, head_xy_patch)


def prefix_names(num_prefix: int, registers: int = 0) -> list[str]:
    """Names of the prefix tokens in timm's order: the class token, a distillation token if any, then registers."""
    if not 0 <= registers <= num_prefix - 1:
        raise ValueError(f"{registers} registers do not fit {num_prefix} prefix tokens (one is the class token)")
    return ["cls", *["dist"] * (num_prefix - 1 - registers), *[f"reg{i}" for i in range(registers)]]


def head_name(layer: int, head: int) -> str:
    """How a head is named everywhere: L3H7."""
    return f"L{layer}H{head}"


def harm(metric: str, values):
    """How much pruning hurts, larger = more important: P'[true] falls (so −P'), the others grow."""
    return -values if metric == "prob" else values
