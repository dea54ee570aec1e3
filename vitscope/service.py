"""On-demand engine work for a store: one image's attention or ablations, recomputed in milliseconds.

Raw attention is not stored by default; the service reloads the store's model once per
process (shared by every app session) and recomputes from the stored thumbnail, which is
exactly the model's input before normalisation.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from vitscope import engine
from vitscope.build import weights_hash
from vitscope.data.images import normalise
from vitscope.errors import StoreMismatch, VitscopeError
from vitscope.models import ViTAdapter, load_model
from vitscope.store import open_store
from vitscope.vocab import ABLATION_MODES


@lru_cache(maxsize=4)
def _model(spec: str, pretrained: bool, checkpoint: str, device: str) -> ViTAdapter:
    return load_model(spec, pretrained=pretrained, checkpoint=checkpoint or None, device=device)


class Service:
    """Engine calls for one store's model and images."""

    def __init__(self, store_path: str | Path, device: str = "cpu") -> None:
        self.path = Path(store_path)
        self.ds = open_store(self.path)
        a = self.ds.attrs
        self.adapter = _model(a["model_spec"], bool(a.get("model_pretrained")), a.get("model_checkpoint", ""), device)
        built = json.loads(a["fingerprint"])["weights"]
        if weights_hash(self.adapter.model) != built:
            raise StoreMismatch(
                f"{self.path} was built with other weights of {a['model_spec']} than the ones loaded now: "
                "rebuild the store (vitscope build ... --overwrite)"
            )
        self.data_config = json.loads(a["data_config"])
        self.images = self.ds.sizes["image"]

    def check_image(self, image: int) -> int:
        if not 0 <= int(image) < self.images:
            raise VitscopeError(
                f"image {image} out of range: {self.path} has {self.images} images (0..{self.images - 1})"
            )
        if not bool(self.ds["valid"][int(image)]):
            raise VitscopeError(f"image {image} ({self.ds['image_id'].values[int(image)]}) could not be read at build")
        return int(image)

    def input(self, image: int) -> torch.Tensor:
        """The model input [1,3,H,W] of a stored image, from its thumbnail."""
        thumb = self.ds["thumbnail"][self.check_image(image)].values[None]
        return normalise(thumb, self.data_config["mean"], self.data_config["std"])

    def attention(self, image: int) -> np.ndarray:
        """All heads' attention of one image, [L, H, P, P] float32."""
        ad = self.adapter
        r = engine.run(ad, self.input(image), torch.tensor([int(self.ds["label"][int(image)])]), modes=(),
                       attention="all")
        return r.attention[0].view(ad.num_layers, ad.num_heads, ad.num_tokens, ad.num_tokens).numpy()

    def ablate(self, image: int, layers=None, modes=ABLATION_MODES) -> engine.EngineResult:
        """The engine's metrics for one image (e.g. for modes or layers not in the store)."""
        label = torch.tensor([int(self.ds["label"][self.check_image(image)])])
        return engine.run(self.adapter, self.input(image), label, layers=layers, modes=modes)
