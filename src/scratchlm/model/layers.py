"""The building blocks, written out: linear maps, embeddings, norms, activations, MLPs.

Each follows torch.nn conventions (a Linear's weight is (out_features, in_features)) and
Hugging Face's module names, so weights map onto Llama/GPT-2 checkpoints by renaming.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Softmax that stays finite for large inputs: subtracting the max changes nothing
    mathematically (exp(x - m) / sum exp(x - m)) but keeps exp() from overflowing.
    Rows that are all -inf (nothing to attend to) give zeros instead of NaN."""
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(x - m)
    s = e.sum(dim=dim, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


def silu(x: Tensor) -> Tensor:
    """SiLU (swish): x * sigmoid(x)."""
    return x * torch.sigmoid(x)


def gelu(x: Tensor) -> Tensor:
    """GELU, tanh approximation (as in GPT-2): 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class Linear(nn.Module):
    """y = x W^T (+ b); weight (out_features, in_features), truncated-normal init."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, std: float = 0.02
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # Shape (out, in) as torch.nn.Linear, but stored column-major (in memory it is
        # the (in, out) matrix): decoding multiplies one row by each weight, streaming it
        # from memory, and that reads faster in this layout (torch's one-core product:
        # ~1.5x decode tokens/s; split across threads, below: 650 vs 1,172 us for the
        # 512 -> 10000 output projection). Training results are the same either way.
        self.weight = nn.Parameter(torch.empty(in_features, out_features).t())
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters(std)

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        if takes_split_path(x, self.weight):
            y = split_linear(x, self.weight)
            return y if self.bias is None else y + self.bias
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, bias={self.bias is not None}"


# Decoding multiplies a few rows (one per sequence) by each weight matrix. On a CPU,
# torch's product for so few rows runs on one core, and its speed is that core's share
# of the memory bandwidth. ``split_linear`` cuts the weight's outputs into one block per
# thread and multiplies the blocks as one batched product, whose batch entries run on
# separate threads: all cores stream the weight (1.2-1.3x decode tokens/s on 2 cores,
# bench/bench_model.py). Same sums, same order within each output: the results equal
# F.linear's to float rounding (a test checks it).
SPLIT_MAX_ROWS = 32
# Weights smaller than this many entries (1 MiB in float32) stay in the CPU's cache,
# where one core is fast and waking the others costs more than it saves (measured: a
# 192 x 512 weight took 1.5x longer split).
SPLIT_MIN_WEIGHTS = 1 << 18


def takes_split_path(x: Tensor, weight: Tensor) -> bool:
    """Whether ``Linear`` computes x (..., in) by weight (out, in) with ``split_linear``:
    on a CPU, without autograd, for at most SPLIT_MAX_ROWS rows and weights of at least
    SPLIT_MIN_WEIGHTS entries, with more than one thread, when the weight is stored in
    one block (row- or column-major), so each thread's part is a view of it. Never
    inside torch.compile, which fuses its own products (and cannot trace the thread
    count)."""
    if torch.compiler.is_compiling() or torch.is_grad_enabled() or not x.is_cpu:
        return False
    threads = torch.get_num_threads()
    return (
        threads > 1
        and weight.shape[0] >= threads
        and x.numel() <= SPLIT_MAX_ROWS * x.shape[-1]
        and weight.numel() >= SPLIT_MIN_WEIGHTS
        and (weight.is_contiguous() or weight.t().is_contiguous())
    )


def split_linear(x: Tensor, weight: Tensor, parts: int | None = None) -> Tensor:
    """x W^T with the outputs split into ``parts`` blocks (default: torch's threads),
    multiplied as one batched product. x (..., in), weight (out, in) -> (..., out).

    No copy of the weight: block p is the view weight[p * n : (p+1) * n], n = out // parts.
    When parts does not divide out (GPT-2's 50,257-token vocabulary), the last few rows
    are one small product of their own.
    """
    parts = parts or torch.get_num_threads()
    out_features, in_features = weight.shape
    n = out_features // parts
    rows = x.reshape(1, -1, in_features).expand(parts, -1, -1)  # (parts, M, in)
    blocks = weight[: parts * n].view(parts, n, in_features).transpose(1, 2)  # (parts, in, n)
    y = torch.bmm(rows, blocks).transpose(0, 1).reshape(*x.shape[:-1], parts * n)
    if parts * n < out_features:
        y = torch.cat([y, nn.functional.linear(x, weight[parts * n :])], dim=-1)
    return y  # (..., out)


class Embedding(nn.Module):
    """Lookup table: ids (...) -> vectors (..., embedding_dim)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float = 0.02) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight[ids]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} x {self.embedding_dim}"


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich, 2019). Computed in float32
    so bf16 activations do not lose the small variances."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias (Ba et al., 2016), in float32."""

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        mean = x32.mean(-1, keepdim=True)
        var = (x32 - mean).pow(2).mean(-1, keepdim=True)
        y = (x32 - mean) * torch.rsqrt(var + self.eps) * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


class DyT(nn.Module):
    """Dynamic tanh, a normalisation-free replacement for a norm layer
    (Zhu et al., 2025): weight * tanh(alpha * x) + bias, alpha a learned scalar."""

    def __init__(self, d: int, alpha_init: float = 0.5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(alpha_init))
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias


def make_norm(kind: str, d: int, eps: float, bias: bool = True) -> nn.Module:
    """The norm layer a config names: ``rmsnorm``, ``layernorm`` or ``dyt``."""
    if kind == "rmsnorm":
        return RMSNorm(d, eps)
    if kind == "layernorm":
        return LayerNorm(d, eps, bias=bias)
    assert kind == "dyt", kind
    return DyT(d)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer, 2020), as in Llama."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, std: float = 0.02) -> None:
        super().__init__()
        self.gate_proj = Linear(d_model, d_ff, bias, std)
        self.up_proj = Linear(d_model, d_ff, bias, std)
        self.down_proj = Linear(d_ff, d_model, bias, std)

    def forward(self, x: Tensor) -> Tensor:  # (..., d_model) -> (..., d_model)
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class GeluMLP(nn.Module):
    """down(gelu(up(x))), as in GPT-2 (whose names are c_fc / c_proj)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, std: float = 0.02) -> None:
        super().__init__()
        self.up_proj = Linear(d_model, d_ff, bias, std)
        self.down_proj = Linear(d_ff, d_model, bias, std)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(nn.functional.gelu(self.up_proj(x), approximate="tanh"))
