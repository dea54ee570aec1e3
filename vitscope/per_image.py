"""The per-image analysis: what a store keeps of each image, from one engine pass over a batch.

The engine prunes every head in every mode (importance, top-k); one forward and backward gives the attention, the
gradient proxy and the three stored input maps (`analysis.explain`). From the attention come strength, CLS vectors,
the binarised maps (packed) and their pattern labels, and with the block output norms the sinks and high-norm tokens
(`analysis.sinks`); each head's direct and total effect on the label's logit come from `engine.effects` and the pruning,
its rollout impact from the attention. The build runs it per chunk, and the service
runs it on a new image (which the app uploads), so both give the same numbers for the same image.
"""

from __future__ import annotations

import numpy as np
import torch

from vitscope import engine, store
from vitscope.analysis import binary, cls, explain, patterns, probe, sinks, strength
from vitscope.engine import effects
from vitscope.engine.explain import attention_gradients
from vitscope.models import ViTAdapter


def analyse_batch(adapter: ViTAdapter, x: torch.Tensor, labels: torch.Tensor, lay: store.Shape, top: float,
            precision: str) -> dict[str, np.ndarray]:
    """The per-image store variables of a batch: preprocessed images `x` [B, 3, h, w] with true `labels` [B] →
    {name: array [B, ...]} in the store's dtypes (not thumbnail, label, valid: the caller has those).

    `top` is the fraction of patch attention binarised, `lay` the store's sizes (binarised-map size, whether
    attention is kept), `precision` the engine's."""
    res = engine.run(adapter, x, labels, precision=precision)
    # the attention, the gradient proxy and the gradient-weighted rollout from one forward and backward
    grads = attention_gradients(adapter, x, res.labels, with_ce=True)
    n, p = adapter.num_prefix, adapter.grid
    a = grads.attention  # [B, L, H, P, P]
    patch = a[..., n:, n:]
    maps = binary.binarise(patch, top)
    scores = patterns.pattern_scores(maps, p)  # [B, L, H, 4]
    label, second = patterns.labels_from_scores(scores)
    s_vec = strength.attention_strength(patch, p)
    out = {
        "baseline_prob": res.probs.gather(1, labels[:, None])[:, 0],
        "topk_idx": res.topk_idx, "topk_prob": res.topk_prob, "importance": res.importance,
        "grad_importance": grads.head_ce, "strength": s_vec,
        "strength_entropy": strength.strength_entropy(s_vec),
        "attention_distance": strength.attention_distance(patch, p),
        "cls_attention": cls.cls_attention_vector(a, n).half(),
        "pattern_score": scores, "pattern_label": label, "pattern_second": second,
        "pattern_offset": patterns.offset_scores(maps, p).argmax(-1),
        "binary_index": binary.pack_binary(maps, lay.binary_size, lay.binary_ones),
        **sinks.image_sinks(a, res.token_norm, n),  # sinks, prefix shares, high-norm tokens
        "input_map": explain.stored_maps(a, grads.relevance, n),
        **head_effects(adapter, x, res), "rollout_impact": explain.rollout_impacts(a, n),
    }
    if lay.store_attention:
        out["attention"] = a.half()
    out = probe.blank(adapter, out)  # a backbone without labels: no class outputs
    dtypes = lay.variables()
    return {k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v).astype(dtypes[k][1], copy=False)
            for k, v in out.items()}


why_no_direct_effects = effects.why_not  # what a build says (and records) before it starts


def head_effects(adapter: ViTAdapter, x: torch.Tensor, res: engine.EngineResult) -> dict[str, torch.Tensor]:
    """The heads' direct and total effects on the label's logit and their output norms at the class token; NaN
    direct effects and norms where the model's heads do not reach the logit linearly (`effects.why_not`)."""
    nan = torch.full_like(res.total_effect, float("nan"))
    out = {"direct_effect": nan, "output_norm": nan, "total_effect": res.total_effect}
    if effects.why_not(adapter) is None:
        e = effects.decompose(adapter, x, res.labels)
        out.update(direct_effect=e.direct.float(), output_norm=e.output_norm.float())
    return out
