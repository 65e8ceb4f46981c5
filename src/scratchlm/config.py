"""Configs as small dataclasses: architecture fields only, derived values as properties,
named presets in one table, and a JSON round trip (saved next to the weights)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.errors import ConfigError

NORMS = ("rmsnorm", "layernorm", "dyt")
FFNS = ("swiglu", "gelu", "relu2")
POSITIONS = ("rope", "learned", "cope", "none")


def flag_info(help: str, **details: Any) -> dict[str, Any]:
    """Field metadata that makes a config field a command-line flag
    (``scratchlm.cli.config_flags``), with ``help`` as its help text. ``details``: argparse
    details where the derived ones do not fit: ``flag`` (default ``--field-name``),
    ``metavar``, ``nargs``."""
    return {"help": help, **details}


def setting(default: Any, help: str, **details: Any) -> Any:
    """A config field with an immutable default that is also a command-line flag: the
    flag's help sits beside the default it describes, which is written only here. (A list
    field uses ``field(default_factory=..., metadata=flag_info(...))``.)"""
    return field(default=default, metadata=flag_info(help, **details))


def _known_fields(cls: type, data: dict[str, Any], what: str, hint: str = "") -> dict[str, Any]:
    """``data`` if every key is a field of the dataclass ``cls``; else ConfigError."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"unknown {what}(s): {', '.join(unknown)}{hint}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class ModelConfig:
    """Architecture of a decoder-only Transformer (``TransformerLM``).

    ``n_kv_heads`` and ``d_ff`` left at None are derived (the properties ``kv_heads`` and
    ``ffn_dim``), so ``dataclasses.replace(config, d_model=...)`` derives them anew.
    ``shared_depth`` R > 1 applies each of the ``n_layers`` blocks R times in a row, each
    application with its own learned residual scale (recursive depth: more compute, same
    weights).

    Options of the speedrun recipes (modded-nanogpt, nanochat), all off by default (the
    ``mini`` preset turns on ``zero_init_proj`` and ``tie_embeddings``):
    ``ffn="relu2"`` (a two-matrix MLP with relu(x)^2, Primer), ``zero_init_proj`` (each
    block's output projections, attention's o_proj and the MLP's down_proj, start at zero,
    so every block starts as the identity) and ``logit_softcap`` (logits = cap *
    tanh(logits / cap), in the forward pass and the fused loss alike).
    """

    vocab_size: int = 10_000
    context_length: int = 256
    d_model: int = 512
    n_layers: int = 4
    n_heads: int = 16
    n_kv_heads: int | None = None  # None: n_heads (no grouped-query attention)
    d_ff: int | None = None  # None: derived from d_model and ffn (see ffn_dim)
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    ffn: str = "swiglu"
    position: str = "rope"
    rope_theta: float = 10_000.0
    tie_embeddings: bool = False
    bias: bool = False
    qk_norm: bool = False
    shared_depth: int = 1
    dropout: float = 0.0  # on the embeddings and each block's two residual branches
    # On the attention probabilities; None: the same as ``dropout``. On a CPU its random
    # mask (batch x heads x T x T numbers a layer) costs far more than the residual ones.
    attention_dropout: float | None = None
    init_std: float = 0.02
    zero_init_proj: bool = False
    logit_softcap: float | None = None  # None: logits as they are

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value."""
        # Types first: a config file or a --model flag can hold anything, and the checks
        # below compare numbers. (bool is an int to Python, never a size here.)
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("n_kv_heads", "d_ff"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ConfigError(
                    f"{name} must be a positive integer, or null to derive it; got {name}={value!r}"
                )
        for name in ("norm_eps", "rope_theta", "dropout", "init_std"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        for name in ("tie_embeddings", "bias", "qk_norm", "zero_init_proj"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name, allowed in (("norm", NORMS), ("ffn", FFNS), ("position", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        cap = self.logit_softcap
        if cap is not None and not (_is_number(cap) and math.isfinite(cap) and cap > 0):
            raise ConfigError(
                f"logit_softcap must be a positive number, or null for none; got {cap!r}"
            )
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                "pick n_heads that divides d_model"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}: "
                "each key/value head must serve the same number of query heads"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"RoPE needs an even head_dim, but d_model/n_heads = {self.d_model}/"
                f"{self.n_heads} = {self.head_dim}"
            )
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        p = self.attention_dropout
        if p is not None and not (_is_number(p) and 0.0 <= p < 1.0):
            raise ConfigError(
                f"attention_dropout must be in [0, 1), or null for dropout's; got {p!r}"
            )
        if not _is_int(self.shared_depth) or self.shared_depth < 1:
            raise ConfigError(f"shared_depth must be an integer >= 1, got {self.shared_depth!r}")
        if self.norm_eps <= 0 or self.init_std <= 0:
            raise ConfigError(
                f"norm_eps and init_std must be positive, got {self.norm_eps}, {self.init_std}"
            )

    # Derived values, computed in one place.
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def attention_dropout_p(self) -> float:
        """The dropout on attention probabilities: ``attention_dropout``, else ``dropout``."""
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_heads``, else one per query head."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.n_heads // self.kv_heads

    @property
    def ffn_dim(self) -> int:
        """The MLP's hidden width: ``d_ff``, else 8/3 * d_model rounded down to a multiple
        of 64 for SwiGLU (the parameter count of a 4x GELU MLP), 4 * d_model for the
        two-matrix MLPs (GELU, ReLU^2)."""
        if self.d_ff is not None:
            return self.d_ff
        if self.ffn == "swiglu":
            return max(1, (8 * self.d_model // 3) // 64 * 64)
        return 4 * self.d_model

    @property
    def depth(self) -> int:
        """Blocks applied per forward pass (n_layers * shared_depth): the KV cache size."""
        return self.n_layers * self.shared_depth

    def resolved(self) -> ModelConfig:
        """The same architecture with the derived values written out: two configs build
        the same model when their ``resolved()`` are equal."""
        return dataclasses.replace(self, n_kv_heads=self.kv_heads, d_ff=self.ffn_dim)

    # JSON round trip.
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**_known_fields(cls, data, "model config field"))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read model config {path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"model config {path} must hold a JSON object")
        model = data.get("model", data)
        if not isinstance(model, dict):
            raise ConfigError(f"model config {path}: 'model' must be an object")
        return cls.from_dict(model)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (unknown names: ConfigError). Derived values
        follow: ``preset("small").replace(d_model=256).ffn_dim`` is 640."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})


# Named presets. vocab_size is a default: training sets it from the tokenizer.
PRESETS: dict[str, dict[str, Any]] = {
    # A few hundred thousand parameters: tests and CPU smoke runs in seconds.
    "tiny": dict(vocab_size=512, context_length=128, d_model=64, n_layers=2, n_heads=4,
                 n_kv_heads=2),
    # Sized for a short budget on a CPU: the best of a size search for 15 minutes on two
    # cores (docs/training.md). Most of its parameters would be the two embeddings: tying
    # them, and starting each block as the identity, each won its ablation there.
    "mini": dict(vocab_size=10_000, context_length=256, d_model=128, n_layers=4, n_heads=4,
                 d_ff=352, tie_embeddings=True, zero_init_proj=True),
    # The classic TinyStories setting.
    "small": dict(vocab_size=10_000, context_length=256, d_model=512, n_layers=4,
                  n_heads=16, d_ff=1344),
    # GPT-2 sizes with the modern (Llama) recipe: RoPE, RMSNorm, SwiGLU.
    "gpt2-small": dict(vocab_size=50_257, context_length=1024, d_model=768, n_layers=12,
                       n_heads=12),
    "gpt2-medium": dict(vocab_size=50_257, context_length=1024, d_model=1024, n_layers=24,
                        n_heads=16),
    # GPT-2 124M exactly as published: learned positions, LayerNorm, GELU, biases, tied.
    "gpt2-classic": dict(vocab_size=50_257, context_length=1024, d_model=768, n_layers=12,
                         n_heads=12, norm="layernorm", ffn="gelu", position="learned",
                         bias=True, tie_embeddings=True),
}  # fmt: skip


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named preset, with some fields overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


@dataclass
class SampleConfig:
    """Sampling settings of generation (see ``scratchlm.sampling``).

    temperature 0 means greedy (argmax). top_k 0 and top_p 1.0 and min_p 0.0 disable
    those filters; penalties of 1.0 / 0.0 disable them. These defaults are those of
    ``scratchlm chat`` and ``generate`` too.
    """

    # 0.7: a small model's answers stay on topic, yet differ from one run to the next.
    temperature: float = setting(0.7, "0 = greedy (argmax)")
    top_k: int = setting(0, "keep the k likeliest tokens (0 = off)")
    top_p: float = setting(1.0, "nucleus: keep the likeliest tokens holding this mass (1 = off)")
    min_p: float = setting(0.0, "drop tokens below min_p times the likeliest one's (0 = off)")
    repetition_penalty: float = setting(1.0, "> 1 discourages tokens already seen (1 = off)")
    presence_penalty: float = setting(0.0, "subtracted once from a seen token's logit (0 = off)")
    frequency_penalty: float = setting(0.0, "subtracted per earlier occurrence (0 = off)")
    max_new_tokens: int = setting(256, "answer budget in tokens")
    seed: int | None = setting(None, "seed for reproducible samples (default: fresh entropy)")
    stop: list[str] = field(
        default_factory=list,
        metadata=flag_info("stop at this text, left out (repeatable)", metavar="TEXT"),
    )

    def __post_init__(self) -> None:
        # isfinite also refuses NaN, which slips past a plain "< 0" comparison.
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ConfigError(f"min_p must be in [0, 1) (0 = off), got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ConfigError(
                f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(
                    f"{name} must be a finite number (0 = off), got {getattr(self, name)}"
                )
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleConfig:
        return cls(**_known_fields(cls, data, "sampling setting"))
