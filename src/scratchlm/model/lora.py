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

and the merged model is an ordinary one, as fast as the base. With ``base="int8"`` the
frozen hidden layers are stored as int8 first ("QLoRA-lite", model/lora_int8.py).

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
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.errors import ConfigError
from scratchlm.model.layers import Linear
from scratchlm.model.lora_int8 import FrozenInt8Linear, Int8Matmul, quantize_base
from scratchlm.model.quantize import dequantize_weight

ALL_LINEAR = "all-linear"
OUTPUT_LAYER = "lm_head"
SPEC_KEYS = ("r", "alpha", "dropout", "base", "targets")
SPEC_EXAMPLE = "r=8,alpha=16,targets=q_proj,v_proj"
BASES = ("float", "int8")  # how the frozen weights are stored


@dataclass
class LoraConfig:
    """Which layers get adapters and how big they are. ``targets``: module names or
    name endings (``q_proj`` matches ``layers.3.self_attn.q_proj``), or ``all-linear``.
    ``base``: "float", or "int8" to store the frozen hidden layers as int8."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    base: str = "float"

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)  # JSON gives a list
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"LoRA r (the rank) must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float):
            raise ConfigError(f"LoRA alpha must be a number, got {self.alpha!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float):
            raise ConfigError(f"LoRA dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        if self.base not in BASES:
            raise ConfigError(f"LoRA base={self.base!r} is not one of {', '.join(BASES)}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(
                f"LoRA targets must be module names such as q_proj,v_proj or {ALL_LINEAR}, "
                f"got {list(self.targets)!r}"
            )

    @property
    def scale(self) -> float:
        """alpha / r: the adapter's output is multiplied by it, so changing r at a fixed
        alpha keeps the size of the update roughly the same."""
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a LoRA config must be a JSON object, got {data!r}")
        unknown = sorted(set(data) - set(SPEC_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown LoRA setting {unknown[0]!r} (the settings: {', '.join(SPEC_KEYS)})"
            )
        return cls(**data)

    def spec(self) -> str:
        """The canonical ``--lora`` text of this config (``parse_lora_spec`` reads it)."""
        return (
            f"r={self.r},alpha={self.alpha:g},dropout={self.dropout:g},base={self.base},"
            f"targets={','.join(self.targets)}"
        )


def parse_lora_spec(spec: str) -> LoraConfig:
    """``"r=8,alpha=16,dropout=0.05,targets=q_proj,v_proj"`` -> LoraConfig. Settings left
    out keep their defaults; the words after ``targets=`` up to the next KEY= are its
    list. ConfigError naming the bad part and what is allowed."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty LoRA spec: give settings such as {SPEC_EXAMPLE}")
    values: dict[str, list[str]] = {}
    key = None
    for part in (p.strip() for p in spec.split(",")):
        name, sep, value = part.partition("=")
        if sep:
            key = name.strip()
            if key not in SPEC_KEYS:
                raise ConfigError(
                    f"unknown LoRA setting {key!r} in {spec!r}: the settings are "
                    f"{', '.join(SPEC_KEYS)} (e.g. {SPEC_EXAMPLE})"
                )
            if key in values:
                raise ConfigError(f"LoRA setting {key!r} is given twice in {spec!r}")
            values[key] = [value.strip()]
        elif key == "targets" and part:
            values[key].append(part)
        else:
            raise ConfigError(
                f"cannot read {part!r} in the LoRA spec {spec!r}: expected KEY=VALUE with "
                f"KEY one of {', '.join(SPEC_KEYS)} (e.g. {SPEC_EXAMPLE})"
            )
    settings: dict[str, Any] = {}
    for key, words in values.items():
        if key in ("targets", "base"):
            settings[key] = tuple(words) if key == "targets" else words[0]
            continue
        number = _number(words[0], key, spec)
        settings[key] = int(number) if key == "r" and number.is_integer() else number
    return LoraConfig(**settings)


def _number(text: str, key: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            f"LoRA {key}={text!r} in {spec!r} is not a number (e.g. {SPEC_EXAMPLE})"
        ) from None


class LoraLinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update:
    y = x W^T + b + scale * dropout(x) A^T B^T, with A (r, in), B (out, r).

    The base layer's tensors keep their names: ``weight`` and ``bias`` of a Linear (its
    own Parameters, shared, not copied: a tied matrix stays tied), or ``qweight``,
    ``scale`` and ``bias`` of a FrozenInt8Linear. ``enabled`` False runs the base alone
    (``adapters_disabled``); ``merged`` True means the update has been added into
    ``weight`` (``merge``)."""

    def __init__(
        self, base: Linear | FrozenInt8Linear, r: int, alpha: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.quantized = isinstance(base, FrozenInt8Linear)
        if self.quantized:
            self.register_buffer("qweight", base.qweight)  # (out, in) int8
            self.register_buffer("scale", base.scale)  # (out,)
            device, dtype = base.scale.device, base.scale.dtype
        else:
            self.weight = base.weight  # (out, in), frozen by apply_lora
            device, dtype = base.weight.device, base.weight.dtype
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
            y = F.linear(x, self.weight, self.bias)
        if self.merged or not self.enabled:
            return y
        h = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        return y + F.linear(h, self.lora_B) * self.lora_scale  # (..., out)

    def delta_weight(self) -> Tensor:
        """scale * B A: the (out, in) change the adapter makes to the weight."""
        return (self.lora_B @ self.lora_A) * self.lora_scale

    def base_weight(self) -> Tensor:
        """The frozen weight (out, in): the int8 one dequantized to float32."""
        if self.quantized:
            return dequantize_weight(self.qweight, self.scale)
        return self.weight

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into ``weight`` (forward then skips the adapter)."""
        if self.quantized:
            raise ConfigError(
                "adapters on an int8 base cannot be merged in place: merge_lora gives a "
                "float model (the dequantized weights plus the update)"
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
        int8 = ", int8 base" if self.quantized else ""
        return f"{self.in_features} -> {self.out_features}, r={self.r}, alpha={self.alpha:g}{int8}"


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def target_modules(model: nn.Module, config: LoraConfig) -> list[str]:
    """The names of the Linear layers ``config.targets`` picks, in model order.
    ConfigError for a target that matches none (with the names there are)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, Linear | FrozenInt8Linear)]
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
    """Put a plain Linear in place of every LoraLinear (and, for an int8 base, of every
    FrozenInt8Linear: its dequantized weight), merging the update or not."""
    for name, m in list(model.named_modules()):
        if not isinstance(m, LoraLinear | FrozenInt8Linear):
            continue
        if isinstance(m, FrozenInt8Linear):
            weight = nn.Parameter(m.dequantized())
        elif m.quantized:
            with torch.no_grad():
                weight = m.base_weight() + (m.delta_weight() if merge else 0)
            weight = nn.Parameter(weight)
        else:
            if merge:
                m.merge()
            else:
                m.unmerge()
            weight = m.weight
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        with torch.device("meta"):  # no allocation: the weight is moved in
            plain = Linear(m.in_features, m.out_features, bias=m.bias is not None)
        plain.weight, plain.bias = weight, m.bias
        setattr(parent, child, plain.train(m.training))
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "lora_config"):
        del model.lora_config


def trainable_parameters(model: nn.Module) -> int:
    """How many numbers an optimizer would update (those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
