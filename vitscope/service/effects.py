"""One stored image's logit decomposition (`vitscope ablate --effects`): each head's direct effect, the embedding's,
each MLP's and the constants' terms, which add up to the label's logit, beside each head's total effect."""

from __future__ import annotations

import torch

from vitscope import engine
from vitscope.engine import effects as fx
from vitscope.errors import VitscopeError
from vitscope.service.explain import Service
from vitscope.vocab import WHOLE_HEAD


def effects(service: Service, image: int) -> dict:
    """{"kind": "effects", "image", "class", "logit", "direct" [L][H], "total" [L][H], "indirect" [L][H],
    "components": {"embed", "mlp" [L], "bias"}} for the image's stored label, in logits."""
    image = service.check_image(int(image))
    adapter = service.adapter
    why = fx.why_not(adapter)
    if why is not None:
        raise VitscopeError(f"{adapter.spec} has no direct effects: {why}. Its total effects are in the store "
                            "(total_effect)")
    x, label = service.input(image), torch.as_tensor(service.labels[[image]])
    e = fx.decompose(adapter, x, label)
    ds = service.ds
    if "total_effect" in ds:  # what the build computed: the same engine, the same numbers
        total = torch.as_tensor(ds["total_effect"][image].values, dtype=torch.float64)
    else:  # a store built before effects were kept: prune each whole head now
        total = engine.run(adapter, x, label, modes=(WHOLE_HEAD,)).total_effect[0].double()
    direct = e.direct[0]
    return {"kind": "effects", "image": image, "class": service.class_names[int(label)], "logit": float(e.logit[0]),
            "direct": direct.tolist(), "total": total.tolist(), "indirect": (total - direct).tolist(),
            "components": {"embed": float(e.embed[0]), "mlp": e.mlp[0].tolist(), "bias": float(e.bias[0])}}
