"""The fast part: baseline, attention capture, and exact batched head ablation (pure torch)."""

from vitscope.engine.ablation import EngineResult, gradient_importance, run
from vitscope.engine.metrics import cosine_distance, jsd, region_mask

__all__ = ["EngineResult", "gradient_importance", "run", "cosine_distance", "jsd", "region_mask"]
