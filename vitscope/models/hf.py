"""A Hugging Face `transformers` ViT seen as layers × heads, with explicit attention (`--model hf:PATH_OR_ID`).

`HFViTAdapter` offers the engine what `ViTAdapter` offers for timm: the attention of each layer is recomputed
from the model's own query/key/value projections with the softmax written out (eager), so maps and ablations
are right whether the model was loaded with SDPA or not, and a head is pruned at the input of its layer's
output projection. Everything else (embeddings, norms, MLPs, LayerScale, classifiers) calls the model's own
modules, found once through `FAMILIES`; the image processor's settings are `hf_preprocessing.py`'s. Other
modules import this one only inside functions or for type checking: transformers loads for `hf:` specs only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor

from vitscope.errors import UnsupportedModelError, VitscopeError
from vitscope.models.adapter import AdapterFacts, AttentionParts, frozen_norm
from vitscope.models.hf_preprocessing import HFPreprocessing

# Each role lists the module paths that transformers versions use for it, oldest first; the first that the
# loaded model has wins (4.x: `encoder.layer.N.attention.attention.query` and `attention.output.dense`; 5.x:
# `layers.N.attention.q_proj` and `o_proj`, renamed family by family). Paths are relative to
# `model.base_model` for the model-level roles and to the layer for the others; `mlp` alternatives are module
# sequences (4.x ViT splits the MLP into `intermediate` and `output.dense`, whose forward adds the residual).
_VIT_LIKE = {
    "embeddings": ("embeddings",), "pre_norm": (), "layers": ("encoder.layer", "layers"),
    "norm1": ("layernorm_before",), "norm2": ("layernorm_after",),
    "q": ("attention.attention.query", "attention.q_proj"), "k": ("attention.attention.key", "attention.k_proj"),
    "v": ("attention.attention.value", "attention.v_proj"), "o": ("attention.output.dense", "attention.o_proj"),
    "ls1": (), "ls2": (), "mlp": (("intermediate", "output.dense"), ("mlp",)), "final_norm": ("layernorm",),
    "fc1": ("intermediate.dense", "mlp.fc1"), "fc2": ("output.dense", "mlp.fc2"),  # for timm_to_hf only
}
_DINOV2 = {
    **_VIT_LIKE, "norm1": ("norm1",), "norm2": ("norm2",), "ls1": ("layer_scale1",), "ls2": ("layer_scale2",),
    "mlp": (("mlp",),),
}
_CLIP = {
    "embeddings": ("vision_model.embeddings", "embeddings"), "pre_norm": ("vision_model.pre_layrnorm", "pre_layrnorm"),
    "layers": ("vision_model.encoder.layers", "encoder.layers"), "norm1": ("layer_norm1",), "norm2": ("layer_norm2",),
    "q": ("self_attn.q_proj",), "k": ("self_attn.k_proj",), "v": ("self_attn.v_proj",),
    "o": ("self_attn.out_proj", "self_attn.o_proj"), "ls1": (), "ls2": (), "mlp": (("mlp",),),
    "final_norm": ("vision_model.post_layernorm", "post_layernorm"),
}


@dataclass(frozen=True)
class Family:
    names: dict
    classes: dict[str, str]  # model class → what its head computes from the final-norm tokens (see `head`)
    prefix: Callable[[object], int]  # config → prefix tokens (class token, distillation token, registers)


# config.model_type → family. A head kind is "cls" (classifier on the class token), "cls+dist" (DeiT with
# teacher: mean of the class- and distillation-token heads), "cls+mean" (Dinov2: classifier on the class token
# concatenated with the mean patch token) or None (a backbone: no classifier, `features` only).
FAMILIES = {
    "vit": Family(_VIT_LIKE, {"ViTModel": None, "ViTForImageClassification": "cls"}, lambda c: 1),
    "deit": Family(_VIT_LIKE, {"DeiTModel": None, "DeiTForImageClassification": "cls",
                               "DeiTForImageClassificationWithTeacher": "cls+dist"}, lambda c: 2),
    "dinov2": Family(_DINOV2, {"Dinov2Model": None, "Dinov2ForImageClassification": "cls+mean"}, lambda c: 1),
    "dinov2_with_registers": Family(
        _DINOV2, {"Dinov2WithRegistersModel": None, "Dinov2WithRegistersForImageClassification": "cls+mean"},
        lambda c: 1 + c.num_register_tokens),
    "clip_vision_model": Family(_CLIP, {"CLIPVisionModel": None}, lambda c: 1),
}
SUPPORTED_CLASSES = tuple(name for f in FAMILIES.values() for name in f.classes)
HF_SUPPORTED = "transformers " + ", ".join(SUPPORTED_CLASSES)


def check_hf_supported(model: torch.nn.Module, spec: str = "model") -> Family:
    """The model's family; UnsupportedModelError (one line naming the supported classes) otherwise."""
    name = type(model).__name__
    family = FAMILIES.get(getattr(getattr(model, "config", None), "model_type", None))
    if family is None or name not in family.classes:
        raise UnsupportedModelError(f"{spec}: {name} is not supported. vitscope supports {HF_SUPPORTED}.")
    return family


class HFViTAdapter(AdapterFacts):
    """A transformers ViT with the interface the engine uses from `ViTAdapter` (see there for each method)."""

    def __init__(self, model: torch.nn.Module, spec: str = "custom", preprocessing: HFPreprocessing | None = None
                 ) -> None:
        family = check_hf_supported(model, spec)
        self.model = model.eval().requires_grad_(False)
        self.spec = spec
        cfg = model.config
        base = model.base_model
        self.kind = family.classes[type(model).__name__]
        self._embeddings = _resolve(base, family.names["embeddings"], "embeddings", spec)
        self._pre_norm = _resolve(base, family.names["pre_norm"], "pre_norm", spec, optional=True)
        self._final_norm = _resolve(base, family.names["final_norm"], "final_norm", spec)
        layers = list(_resolve(base, family.names["layers"], "layers", spec))
        self._layer_modules = layers
        self._layers = [{role: _resolve_layer(layer, family.names, role, spec) for role in
                         ("norm1", "q", "k", "v", "o", "ls1", "norm2", "mlp", "ls2")} for layer in layers]
        self.num_layers = len(layers)
        self.num_heads: int = cfg.num_attention_heads
        self.head_dim: int = cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.num_prefix: int = family.prefix(cfg)
        self.patch_size: int = _side(cfg.patch_size, "patch size", spec)
        built = _side(cfg.image_size, "image size", spec)
        size = built if preprocessing is None else _side(preprocessing.size, "processor's output size", spec)
        if size != built and cfg.model_type != "dinov2" and cfg.model_type != "dinov2_with_registers":
            raise UnsupportedModelError(f"{spec}: its image processor gives {size}×{size} images but the model was "
                                        f"built for {built}×{built}; save a processor that matches")
        self.image_size = size
        self.grid: int = size // self.patch_size
        self.num_tokens = self.num_prefix + self.grid**2
        self.num_classes: int = getattr(cfg, "num_labels", 0) if self.kind else 0
        # The class-token heads read only the prefix rows, so the last block computes only those; Dinov2's
        # classifier also reads the mean patch token.
        self.head_rows: int | None = None if self.kind == "cls+mean" else self.num_prefix
        self.blocks = [_Block(self, i) for i in range(self.num_layers)]
        self.preprocessing = preprocessing
        # vitscope.imagesets.folders.Preprocessor finds the model's preprocessing here (it is handed `adapter.model`).
        model.vitscope_preprocessing = preprocessing

    def model_class(self) -> str:
        return f"{type(self.model).__name__} (transformers {transformers.__version__})"

    # -- pieces of the forward pass -------------------------------------------------------

    def embed(self, images: Tensor) -> Tensor:
        """Images [B,3,h,w] → tokens [B,P,D] entering layer 0 (the model's own embeddings; CLIP's pre-norm)."""
        x = self._embeddings(images)
        return self._pre_norm(x) if self._pre_norm is not None else x

    def attention(self, layer: int, x: Tensor) -> AttentionParts:
        """Explicit attention of layer `layer` on its input `x` [B,P,D] (before the first norm)."""
        m = self._layers[layer]
        h = m["norm1"](x)
        q, k, v = (self._heads(m[r](h)) for r in "qkv")
        a = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # as transformers' eager attention
        return AttentionParts(q, k, v, a, None)

    def project(self, layer: int, heads_out: Tensor, gate: Tensor | None) -> Tensor:
        """Concatenated head outputs [B,P,H*dh] → attention-layer output z [B,P,D] (the output projection)."""
        return self._layers[layer]["o"](heads_out)

    def finish_block(self, layer: int, x: Tensor, z: Tensor) -> Tensor:
        """Residual add of the attention output (after LayerScale, if any), then the MLP half of the layer."""
        x = x + self.attention_residual(layer, z)
        return x + self.mlp_residual(layer, x)

    def attention_residual(self, layer: int, z: Tensor) -> Tensor:
        """What the attention output z adds to the residual stream (after LayerScale, if any)."""
        ls1 = self._layers[layer]["ls1"]
        return ls1(z) if ls1 is not None else z

    def mlp_residual(self, layer: int, x: Tensor) -> Tensor:
        """What the MLP half adds to the residual stream `x` (after the attention's add)."""
        m = self._layers[layer]
        y = m["mlp"](m["norm2"](x))
        return m["ls2"](y) if m["ls2"] is not None else y

    def why_not_linear(self) -> str | None:
        """Why a head's share of the logit is not a sum of terms (None when it is; see `ViTAdapter`)."""
        if not isinstance(self._final_norm, torch.nn.LayerNorm):
            return f"its final norm is a {type(self._final_norm).__name__}, not a LayerNorm"
        return None

    def run_blocks(self, x: Tensor, start: int) -> Tensor:
        """Layers `start`.. to the end (fused attention); the last computes only the `head_rows` rows the head
        reads. Returns the final tokens (before the final norm)."""
        for i in range(start, self.num_layers):
            last = i == self.num_layers - 1 and self.head_rows is not None
            x = self._block(i, x, self.head_rows if last else None)
        return x

    def head(self, x: Tensor) -> Tensor:
        """Tokens after the last layer (all, or the first `head_rows`) → logits [B,C], as the model computes them."""
        return self._classify(self._final_norm(x))

    def frozen_head(self, x: Tensor, ref: Tensor, pre_logits: bool = False) -> Tensor:
        """`head` (or `features` with `pre_logits`) of tokens `x` [N, R, D] with the final norm's scale σ taken from
        `ref` [1, R, D]: affine in `x` (see `ViTAdapter.frozen_head`)."""
        h = frozen_norm(self._final_norm, x, ref)
        return h[:, 0] if pre_logits else self._classify(h)

    def _classify(self, h: Tensor) -> Tensor:
        """Final-norm tokens → logits [B,C]."""
        m = self.model
        if self.kind == "cls":
            return m.classifier(h[:, 0])
        if self.kind == "cls+dist":
            return (m.cls_classifier(h[:, 0]) + m.distillation_classifier(h[:, 1])) / 2
        if self.kind == "cls+mean":
            return m.classifier(torch.cat([h[:, 0], h[:, self.num_prefix:].mean(1)], dim=1))
        raise UnsupportedModelError(f"{self.spec}: no classifier: {type(m).__name__} is a backbone; backbones get a "
                                    "linear probe")

    def features(self, x: Tensor) -> Tensor:
        """Tokens after the last layer → the pooled representation [B,D] a linear probe reads: the class token
        after the final norm (CLIP: `post_layernorm` of it, its `pooler_output`)."""
        return self._final_norm(x[:, :1])[:, 0]

    def logits(self, images: Tensor) -> Tensor:
        """The unpruned model's logits for preprocessed images [B,3,h,w]."""
        return self.head(self.run_blocks(self.embed(images.to(self.device, self.dtype)), 0))

    # -- internals ---------------------------------------------------------------------------

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _block(self, layer: int, x: Tensor, rows: int | None = None) -> Tensor:
        """One layer with fused attention (for the layers no ablation touches); only the first `rows` queries."""
        m = self._layers[layer]
        h = m["norm1"](x)
        k, v = self._heads(m["k"](h)), self._heads(m["v"](h))
        q = self._heads(m["q"](h if rows is None else h[:, :rows]))
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        z = m["o"](o.transpose(1, 2).flatten(2))
        return self.finish_block(layer, x if rows is None else x[:, :rows], z)


class _Block:
    """Layer i as a callable on tokens, as the engine calls timm's blocks (`adapter.blocks[i](x)`)."""

    def __init__(self, adapter: HFViTAdapter, layer: int) -> None:
        self.adapter, self.layer = adapter, layer

    def __call__(self, x: Tensor) -> Tensor:
        return self.adapter._block(self.layer, x)


def _resolve(root: torch.nn.Module, paths: tuple, role: str, spec: str, optional: bool = False):
    for path in paths:
        try:
            return root.get_submodule(path)
        except AttributeError:
            continue
    if optional or not paths:
        return None
    raise UnsupportedModelError(f"{spec}: this transformers {transformers.__version__} model has no {role} module "
                                f"at {' or '.join(paths)} (vitscope knows transformers 4.52 to 5.x names)")


def _resolve_layer(layer: torch.nn.Module, names: dict, role: str, spec: str):
    if role != "mlp":
        return _resolve(layer, names[role], role, spec, optional=role in ("ls1", "ls2"))
    for seq in names["mlp"]:
        try:
            mods = [layer.get_submodule(p) for p in seq]
        except AttributeError:
            continue
        if len(mods) == 1:
            return mods[0]
        first, second = mods
        return lambda h, first=first, second=second: second(first(h))
    raise UnsupportedModelError(f"{spec}: this transformers {transformers.__version__} model has no MLP at "
                                f"{' or '.join('+'.join(s) for s in names['mlp'])}")


def _side(value, what: str, spec: str) -> int:
    """One side of a square size given as an int or a pair."""
    if isinstance(value, int):
        return value
    h, w = (int(v) for v in value)
    if h != w:
        raise UnsupportedModelError(f"{spec}: its {what} {h}×{w} is not square")
    return h


# -- loading -------------------------------------------------------------------------------------


def load_hf(name: str, spec: str) -> HFViTAdapter:
    """`hf:PATH_OR_ID`: a local `save_pretrained` folder, or a hub id (online, or in the local cache when offline),
    loaded in float32 with eager attention, with its image processor's preprocessing."""
    path = Path(name).expanduser()
    local = path.is_dir()
    if not local and (name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1):
        raise VitscopeError(f"{spec}: model folder not found: {path} (pass a folder written by save_pretrained)")
    source = str(path) if local else name
    offline = _offline()
    kwargs = {"local_files_only": True} if local or offline else {}
    try:
        config = transformers.AutoConfig.from_pretrained(source, **kwargs)
    except Exception as e:  # missing files, bad JSON, unknown model type, network: all one line
        if not local and offline:
            raise VitscopeError(f"{spec}: not a local folder, and the hub is offline (HF_HUB_OFFLINE) with no cached "
                                "copy: save the model with save_pretrained where there is internet and pass its "
                                "folder") from None
        raise VitscopeError(f"{spec}: cannot read its config ({type(e).__name__}: {_first_line(e)})") from None
    arch = (getattr(config, "architectures", None) or [None])[0]
    family = FAMILIES.get(config.model_type)
    if family is None or arch not in family.classes:
        what = arch or f"model type {config.model_type!r}"
        raise UnsupportedModelError(f"{spec}: {what} is not supported. vitscope supports {HF_SUPPORTED}.")
    # 5.x calls it `dtype`, and from 5.25 swaps in hub kernels by default (downloads; other modules than ours).
    major = int(transformers.__version__.split(".")[0])
    options = {"dtype": torch.float32, "use_kernels": False} if major >= 5 else {"torch_dtype": torch.float32}
    # Its notes on slow/fast processors and 5.x's weight-loading progress bar are not the user's business.
    verbosity, bar = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        model = getattr(transformers, arch).from_pretrained(
            source, attn_implementation="eager", **options, **kwargs)
        proc = transformers.AutoImageProcessor.from_pretrained(source, **kwargs)
    except OSError as e:
        raise VitscopeError(f"{spec}: cannot load its weights or image processor config ({_first_line(e)}); a "
                            "folder needs what save_pretrained writes for the model and its image processor") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.logging.enable_progress_bar()
    return HFViTAdapter(model, spec, HFPreprocessing.from_processor(proc, spec))


def _offline() -> bool:
    """The hub's offline switch (HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE), read now rather than at import."""
    from transformers.utils import hub

    env = any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
              for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(getattr(hub, "is_offline_mode", lambda: False)())


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
