"""Text summary of head importance over the demo images (what `vitscope demo` prints until the app lands)."""

from __future__ import annotations

import torch
from tqdm import tqdm

from vitscope import engine
from vitscope.data import demo as demo_data
from vitscope.engine.metrics import MODE_NAMES
from vitscope.models import ViTAdapter

BARS = " ▁▂▃▄▅▆▇█"


def run_demo_images(adapter: ViTAdapter, limit: int | None, batch_size: int) -> engine.EngineResult:
    """Engine results for the demo evaluation images, concatenated over batches."""
    images, labels = demo_data.eval_set(limit)
    parts = []
    for s in tqdm(range(0, len(images), batch_size), desc="head ablation", unit="batch"):
        x = demo_data.to_tensor(images[s:s + batch_size])
        parts.append(engine.run(adapter, x, torch.from_numpy(labels[s:s + batch_size])))
    first = parts[0]
    cat = {f: torch.cat([getattr(p, f) for p in parts]) for f in
           ("labels", "probs", "topk_idx", "topk_prob", "importance")}
    return engine.EngineResult(modes=first.modes, **cat)


def demo_summary(adapter: ViTAdapter, limit: int | None = None, batch_size: int = 16) -> str:
    r = run_demo_images(adapter, limit, batch_size)
    L, H = adapter.num_layers, adapter.num_heads
    acc = (r.probs.argmax(-1) == r.labels).float().mean().item()
    base = r.metric("prob", 0)  # [N, L, H]: P[true], unpruned
    drop = (base - r.metric("prob", 1)).mean(0)  # mean drop of P[true] with the head pruned
    jsd = r.metric("jsd", 1).mean(0)
    lines = [
        f"vitscope demo: {adapter.spec} ViT, {L} layers × {H} heads, {adapter.grid}×{adapter.grid} patches, "
        f"on {len(r.labels)} demo images",
        f"accuracy of the unpruned model: {acc:.1%}",
        "",
        "Head importance: mean drop of P[true label] when the head is pruned (mode 1)",
        "        " + "".join(f"  head {h:<3}" for h in range(H)),
    ]
    top = drop.max().clamp_min(1e-12)
    for i in range(L):
        cells = "".join(f" {BARS[int((d / top).clamp(0, 1) * (len(BARS) - 1))]} {d:+.4f}" for d in drop[i])
        lines.append(f"layer {i:<2}{cells}")
    order = jsd.flatten().argsort(descending=True)[:5]
    lines += ["", "Most important heads by mean JSD of the output (mode 1): " + ", ".join(
        f"L{int(k) // H}H{int(k) % H} {jsd.flatten()[k]:.3f}" for k in order)]
    lines += ["", "Mean over all heads, by pruning mode:    drop P[true]    JSD   cls_dist  patch_dist"]
    for m in r.modes[1:]:
        lines.append(
            f"  mode {m} {MODE_NAMES[m]:<22}      {(base - r.metric('prob', m)).mean():+.4f}  "
            f"{r.metric('jsd', m).mean():.4f}   {r.metric('cls_dist', m).mean():.4f}     "
            f"{r.metric('patch_dist', m).mean():.4f}"
        )
    return "\n".join(lines)
