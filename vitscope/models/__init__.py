"""Getting a ViT and seeing it as layers × heads (docs/architecture.md, Layers)."""

from vitscope.models.adapter import SUPPORTED_FAMILIES, AttentionParts, ViTAdapter, check_supported, merge_heads
from vitscope.models.loading import DEMO_CLASSES, build_demo_model, load_model
from vitscope.models.weights import weights_hash

__all__ = [
    "SUPPORTED_FAMILIES", "AttentionParts", "ViTAdapter", "check_supported", "merge_heads",
    "DEMO_CLASSES", "build_demo_model", "load_model", "weights_hash",
]
