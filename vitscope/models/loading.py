"""Getting a ViT from a spec: `demo`, `timm:<name>` (random init, pretrained or a local checkpoint), or
`hf:<folder or hub id>` (a transformers model, `vitscope.models.hf`)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch

from vitscope.errors import VitscopeError
from vitscope.models.adapter import ViTAdapter

if TYPE_CHECKING:
    from vitscope.models.hf import HFViTAdapter

DEMO_WEIGHTS = Path(__file__).with_name("demo_vit.safetensors")
DEMO_CLASSES = [str(d) for d in range(10)]
# A 6-layer × 4-head ViT on 64×64 images with 8×8 patches (8×8 grid, 65 tokens).
DEMO_ARCH = "vit_tiny_patch16_224"
DEMO_KWARGS = dict(img_size=64, patch_size=8, embed_dim=96, depth=6, num_heads=4, num_classes=10)
DEMO_DATA_CFG = dict(
    input_size=(3, 64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    crop_pct=1.0, interpolation="bilinear", num_classes=10,
)


def build_demo_model() -> torch.nn.Module:
    """The demo architecture, randomly initialised (train-demo trains it)."""
    return timm.create_model(DEMO_ARCH, pretrained=False, pretrained_cfg_overlay=DEMO_DATA_CFG, **DEMO_KWARGS)


def load_model(
    spec: str,
    *,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    **timm_kwargs,
) -> ViTAdapter | HFViTAdapter:
    """Load a model by spec and wrap it in a ViTAdapter (HFViTAdapter for `hf:`); user errors raise one-line
    VitscopeError.

    `timm_kwargs` go to `timm.create_model` (e.g. `img_size=32, depth=2` for small test models).
    """
    device = _check_device(device)
    if spec.startswith("hf:"):
        return _load_hf(spec, checkpoint, timm_kwargs, device)
    if spec == "demo" and checkpoint is None:
        checkpoint = DEMO_WEIGHTS
        if not DEMO_WEIGHTS.exists():
            raise VitscopeError(
                f"demo weights missing at {DEMO_WEIGHTS}: reinstall vitscope or run `vitscope train-demo`"
            )
    state = _read_state_dict(Path(checkpoint)) if checkpoint is not None else None
    if spec == "demo":
        model = build_demo_model()
    elif spec.startswith("timm:"):
        model = _create_timm(spec[5:], pretrained and state is None, state, timm_kwargs)
    else:
        hint = f" Did you mean 'timm:{spec}'?" if timm.is_model(spec) else ""
        raise VitscopeError(
            f"unknown model spec {spec!r}: use 'demo', 'timm:<name>' (e.g. timm:vit_base_patch16_224) or "
            f"'hf:<folder or hub id>'.{hint}"
        )
    if state is not None:
        _load_state(model, state, Path(checkpoint), spec)
    adapter = ViTAdapter(model, spec)
    adapter.model.to(device)
    return adapter


def _load_hf(spec: str, checkpoint, kwargs: dict, device: torch.device) -> HFViTAdapter:
    if checkpoint is not None:
        raise VitscopeError(f"--checkpoint does not apply to {spec}: an hf: folder holds its own weights")
    if kwargs:
        raise VitscopeError(f"{', '.join(kwargs)}: timm options, not for {spec}")
    if not spec[3:]:
        raise VitscopeError("hf: needs a folder written by save_pretrained or a hub id, e.g. hf:./my-vit")
    from vitscope.models.hf import load_hf  # imports transformers: only for hf: specs

    adapter = load_hf(spec[3:], spec)
    adapter.model.to(device)
    return adapter


def _check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise VitscopeError(f"unknown device {device!r}: use cpu, cuda or cuda:N ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VitscopeError(f"device {device!r} requested but CUDA is not available here: use --device cpu")
    return dev


def _create_timm(name: str, pretrained: bool, state: dict | None, kwargs: dict) -> torch.nn.Module:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Close names: {', '.join(close)}." if close else " List names with timm.list_models('*vit*')."
        raise VitscopeError(f"unknown timm model {name!r} (from --model timm:{name}).{hint}")
    if state is not None and "num_classes" not in kwargs:
        # A checkpoint without `head.*` is a backbone (e.g. a self-supervised one): built without a classifier,
        # it gets a linear probe at build time (vitscope.analysis.probe).
        kwargs = {**kwargs, "num_classes": int(state["head.weight"].shape[0]) if "head.weight" in state else 0}
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:  # hub/network failures come as many exception types
        if pretrained:
            raise VitscopeError(
                f"could not get pretrained weights for timm:{name} ({type(e).__name__}: {_first_line(e)}); "
                "offline? download them on a machine with internet and pass --checkpoint PATH"
            ) from None
        raise VitscopeError(f"could not build timm:{name} with {kwargs}: {_first_line(e)}") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (unwrapping {'state_dict'|'model': ...})."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise VitscopeError(f"checkpoint not found: {path} (pass an existing .pth/.safetensors file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure is the user's file, not our bug
        raise VitscopeError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VitscopeError(f"checkpoint {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_state(model: torch.nn.Module, state: dict, path: Path, spec: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        raise VitscopeError(
            f"checkpoint {path} does not fit {spec}: {'; '.join(parts)}. Check that --model names "
            "the architecture the checkpoint was trained with."
        )
    model.load_state_dict(state)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
