"""The settings of LoRA adapters (model/lora.py): ``LoraConfig``, and ``parse_lora_spec``,
which reads the ``--lora`` text of the CLI (``r=8,alpha=16,targets=q_proj,v_proj``).

A config round-trips through JSON (``to_dict`` / ``from_dict``: checkpoints record it) and
through its canonical ``--lora`` text (``spec``: a run compares it on resume)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from scratchlm.errors import ConfigError

ALL_LINEAR = "all-linear"
OUTPUT_LAYER = "lm_head"
SPEC_KEYS = ("r", "alpha", "dropout", "base", "targets")
SPEC_EXAMPLE = "r=8,alpha=16,targets=q_proj,v_proj"
BASES = ("float", "bf16", "int8")  # how the frozen weights are stored


@dataclass
class LoraConfig:
    """Which layers get adapters and how big they are. ``targets``: module names or
    name endings (``q_proj`` matches ``layers.3.self_attn.q_proj``), or ``all-linear``.
    ``base``: how the frozen weights are stored: "float" (as they are), "bf16" (every
    frozen matrix in bfloat16, model/lora_bf16.py) or "int8" (the hidden layers as
    int8, model/lora_int8.py)."""

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
