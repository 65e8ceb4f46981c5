"""LoRA: low-rank adapters on a frozen model (Hu et al., 2021, "LoRA: Low-Rank Adaptation
of Large Language Models").

Fine-tuning changes a weight W (out, in) by some dW. LoRA bets that the change a new
task needs has a low rank, and trains it as a product of two thin matrices instead:

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A (r, in), B (out, r)

W and b stay frozen. A starts small and random (uniform in +-1/sqrt(in), as PEFT's
default), B starts at zero, so at step 0 the adapted model *is* the base model, and only
r * (in + out) numbers per wrapped layer are trained (and kept in the optimizer). Since
the change is linear, it folds back into the weight when training is done:

    W' = W + (alpha / r) * B A                                   (``merge_lora``)

and the merged model is an ordinary one, as fast as the base. With ``base="bf16"`` every
frozen matrix is stored in bfloat16 first (model/lora_bf16.py: half the memory, the same
products under bf16 autocast); with ``base="int8"`` the frozen hidden layers are stored
as int8 ("QLoRA-lite", model/lora_int8.py). The settings: model/lora_config.py.

``apply_lora(model, config)`` wraps the chosen ``Linear`` layers in place by name
(``q_proj``, ``mlp.up_proj``, ``layers.0.self_attn.v_proj``... or ``all-linear``: every
Linear but the output layer, which is wrapped only when named ``lm_head``). A wrapper
keeps the base's ``weight`` and ``bias`` under their own names and adds ``lora_A`` and
``lora_B``, so a LoRA model's state dict is the base model's plus the adapters, and a
checkpoint of one records its ``LoraConfig`` to be rebuilt (checkpoint/rebuild.py).

This lives beside the model (not in ``tune/``) because the checkpoint loader and the
trainer build LoRA models; ``scratchlm.tune.lora`` is the interface users import.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.errors import ConfigError
from scratchlm.model.layers import Linear
from scratchlm.model.lora_bf16 import (
    FrozenBf16Embedding,
    FrozenBf16Linear,
    float_module,
    store_base_bf16,
    weight_for,
)
from scratchlm.model.lora_config import ALL_LINEAR, OUTPUT_LAYER, LoraConfig
from scratchlm.model.lora_int8 import FrozenInt8Linear, Int8Matmul, quantize_base
from scratchlm.model.quantize import dequantize_weight


class LoraLinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update:
    y = x W^T + b + scale * dropout(x) A^T B^T, with A (r, in), B (out, r).

    The base layer's tensors keep their names: ``weight`` and ``bias`` of a Linear (its
    own Parameters, shared, not copied: a tied matrix stays tied) or of a
    FrozenBf16Linear, or ``qweight``, ``scale`` and ``bias`` of a FrozenInt8Linear. The
    adapters get the dtype the base computes in (float32 over a bf16 or int8 base).
    ``enabled`` False runs the base alone
    (``adapters_disabled``); ``merged`` True means the update has been added into
    ``weight`` (``merge``)."""

    def __init__(
        self,
        base: Linear | FrozenBf16Linear | FrozenInt8Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.quantized = isinstance(base, FrozenInt8Linear)
        self.bf16_base = isinstance(base, FrozenBf16Linear)
        if self.quantized:
            self.register_buffer("qweight", base.qweight)  # (out, in) int8
            self.register_buffer("scale", base.scale)  # (out,)
            device, dtype = base.scale.device, base.scale.dtype
        else:
            self.weight = base.weight  # (out, in), frozen by apply_lora
            device = base.weight.device
            dtype = base.dtype if self.bf16_base else base.weight.dtype
        self.bias = base.bias
        self.r, self.alpha, self.lora_scale = r, alpha, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=device, dtype=dtype))
        # PEFT's default: kaiming_uniform_(a=sqrt(5)), which is uniform in +-1/sqrt(in).
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.lora_A, -bound, bound)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        if self.quantized:
            y = Int8Matmul.apply(x, self.qweight, self.scale)
            y = y if self.bias is None else y + self.bias
        else:
            y = F.linear(x, weight_for(x, self.weight), self.bias)
        if self.merged or not self.enabled:
            return y
        h = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        return y + F.linear(h, self.lora_B) * self.lora_scale  # (..., out)

    def delta_weight(self) -> Tensor:
        """scale * B A: the (out, in) change the adapter makes to the weight."""
        return (self.lora_B @ self.lora_A) * self.lora_scale

    def base_weight(self) -> Tensor:
        """The frozen weight (out, in): an int8 or bf16 one in float32 (the adapters' dtype)."""
        if self.quantized:
            return dequantize_weight(self.qweight, self.scale)
        return self.weight.to(self.lora_A.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into ``weight`` (forward then skips the adapter)."""
        if self.quantized or self.bf16_base:
            kind = "int8" if self.quantized else "bf16"
            raise ConfigError(
                f"adapters on an {kind} base cannot be merged in place: merge_lora gives a "
                "float model (the base's weights in float32 plus the update)"
            )
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of ``weight``."""
        if self.merged:
            self.weight.sub_(self.delta_weight())
            self.merged = False

    def extra_repr(self) -> str:
        base = ", int8 base" if self.quantized else ", bf16 base" if self.bf16_base else ""
        return f"{self.in_features} -> {self.out_features}, r={self.r}, alpha={self.alpha:g}{base}"


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def target_modules(model: nn.Module, config: LoraConfig) -> list[str]:
    """The names of the Linear layers ``config.targets`` picks, in model order.
    ConfigError for a target that matches none (with the names there are)."""
    kinds = Linear | FrozenBf16Linear | FrozenInt8Linear
    linears = [n for n, m in model.named_modules() if isinstance(m, kinds)]
    chosen: set[str] = set()
    for target in config.targets:
        if target == ALL_LINEAR:
            hits = [n for n in linears if n != OUTPUT_LAYER]
        elif target == OUTPUT_LAYER:
            hits = [n for n in linears if n == OUTPUT_LAYER]
        else:
            hits = [n for n in linears if n != OUTPUT_LAYER and _matches(n, target)]
        if not hits:
            kinds = sorted({n.rpartition(".")[2] for n in linears})
            raise ConfigError(
                f"LoRA target {target!r} matches no Linear layer of this model: name one of "
                f"{', '.join(kinds)} (or a full name such as {linears[0]}), or {ALL_LINEAR}"
            )
        chosen.update(hits)
    return [n for n in linears if n in chosen]


def apply_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Wrap the Linear layers ``config`` names with ``LoraLinear``, in place; freeze every
    other parameter (requires_grad False). Returns the wrapped names. The model
    remembers the config (``lora_config_of``) for checkpoints."""
    if lora_config_of(model) is not None or any(isinstance(m, LoraLinear) for m in model.modules()):
        raise ConfigError("this model already has LoRA adapters: merge them first (merge_lora)")
    names = target_modules(model, config)
    head = getattr(model, OUTPUT_LAYER, None)
    embed = getattr(getattr(model, "embed_tokens", None), "weight", None)
    if OUTPUT_LAYER in names and head is not None and head.weight is embed:
        raise ConfigError(
            "LoRA on lm_head of a model with tied embeddings would change the embedding "
            "too when merged: leave lm_head out of the targets"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    if config.base == "int8":
        quantize_base(model)
    elif config.base == "bf16":
        store_base_bf16(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        wrapper = LoraLinear(base, config.r, config.alpha, config.dropout)
        setattr(parent, child, wrapper.train(base.training))  # an eval model stays in eval
    model.lora_config = config
    return names


def lora_config_of(model: nn.Module) -> LoraConfig | None:
    """The LoraConfig ``apply_lora`` gave ``model``, or None when it has no adapters."""
    return getattr(model, "lora_config", None)


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    """Name -> LoraLinear, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter matrices (each layer's A then B), in model order."""
    return [p for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapters: ``{"layers.0.self_attn.q_proj.lora_A": (r, in), ...}``."""
    return {
        f"{name}.{which}": getattr(m, which)
        for name, m in lora_modules(model).items()
        for which in ("lora_A", "lora_B")
    }


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its base (the adapters skipped), e.g. the
    reference model of DPO without a second copy of the weights."""
    modules = list(lora_modules(model).values())
    assert not any(m.merged for m in modules), "adapters merged into the weights: unmerge first"
    before = [m.enabled for m in modules]
    for m in modules:
        m.enabled = False
    try:
        yield model
    finally:
        for m, was in zip(modules, before, strict=True):
            m.enabled = was


def merge_adapters(model: nn.Module) -> None:
    """Add every adapter's update into its weight, keeping the wrappers (``unmerge_adapters``
    takes them out again)."""
    for m in lora_modules(model).values():
        m.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.unmerge()


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its weight (W + scale * B A) and put plain Linear layers
    back, in place: the model is then an ordinary one, every parameter trainable again."""
    _unwrap(model, merge=True)


def strip_lora(model: nn.Module) -> None:
    """Drop the adapters, keeping the base weights as they are (not merged): the base
    model the adapters were trained on, every parameter trainable again."""
    _unwrap(model, merge=False)


def _unwrap(model: nn.Module, *, merge: bool) -> None:
    """Put a plain Linear in place of every LoraLinear, merging the update or not, and a
    float one in place of every frozen int8 or bf16 layer (for an int8 or bf16 base, the
    weights in float32). A tensor two layers share (a tied output layer) stays shared."""
    floats: dict[int, nn.Parameter] = {}  # id of a bf16 tensor -> its float form, made once

    def as_float(m: FrozenBf16Linear | FrozenBf16Embedding) -> nn.Parameter:
        if id(m.weight) not in floats:
            floats[id(m.weight)] = nn.Parameter(m.weight.detach().to(m.dtype))
        return floats[id(m.weight)]

    for name, m in list(model.named_modules()):
        if isinstance(m, FrozenBf16Linear | FrozenBf16Embedding):
            plain = float_module(m, as_float(m))
        elif isinstance(m, LoraLinear | FrozenInt8Linear):
            if isinstance(m, FrozenInt8Linear):
                weight = nn.Parameter(m.dequantized())
            elif m.quantized or m.bf16_base:
                with torch.no_grad():
                    weight = m.base_weight() + (m.delta_weight() if merge else 0)
                weight = nn.Parameter(weight)
            else:
                if merge:
                    m.merge()
                else:
                    m.unmerge()
                weight = m.weight
            with torch.device("meta"):  # no allocation: the weight is moved in
                plain = Linear(m.in_features, m.out_features, bias=m.bias is not None)
            plain.weight, plain.bias = weight, m.bias
            plain.train(m.training)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "lora_config"):
        del model.lora_config


def trainable_parameters(model: nn.Module) -> int:
    """How many numbers an optimizer would update (those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
