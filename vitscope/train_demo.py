"""`vitscope train-demo`: train the embedded demo ViT on the demo digits (seeded, CPU-friendly)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitscope.data import demo as demo_data
from vitscope.data.demo import to_tensor
from vitscope.models.loading import DEMO_WEIGHTS, build_demo_model


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
    model.eval()
    hits = 0
    for s in range(0, len(images), batch):
        pred = model(to_tensor(images[s:s + batch])).argmax(-1).numpy()
        hits += int((pred == labels[s:s + batch]).sum())
    return hits / len(images)


def train(rounds: int = 270, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
          out: Path = DEMO_WEIGHTS) -> float:
    """Train on `rounds` fresh compositions of the 797 training digits; save; return held-out accuracy."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = build_demo_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    per_round = math.ceil(len(demo_data.split_indices()[0]) / batch_size)
    total = rounds * per_round
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (0.05 * total)) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    eval_x, eval_y = demo_data.eval_set()
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc="train-demo", unit="step")
    for r in range(rounds):
        model.train()
        x, y = demo_data.train_batch(seed * 100_000 + r)
        x, y = to_tensor(x), torch.from_numpy(y)
        order = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch_size):
            idx = order[s:s + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update()
        if (r + 1) % 20 == 0 or r + 1 == rounds:
            bar.set_postfix(loss=f"{loss.item():.3f}", heldout_acc=f"{accuracy(model, eval_x, eval_y):.3f}")
    bar.close()
    acc = accuracy(model, eval_x, eval_y)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out), metadata={"heldout_accuracy": f"{acc:.4f}", "rounds": str(rounds),
                                         "seed": str(seed)})
    return acc
