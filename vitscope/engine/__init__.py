"""The fast part: baseline, attention capture, and exact batched head ablation (pure torch)."""

from vitscope.engine.ablation import PRECISIONS, EngineResult, gradient_importance, run
from vitscope.engine.metrics import METRICS, MODE_NAMES, MODES, cosine_distance, jsd, region_mask

__all__ = [
    "PRECISIONS", "EngineResult", "gradient_importance", "run",
    "METRICS", "MODE_NAMES", "MODES", "cosine_distance", "jsd", "region_mask",
]
