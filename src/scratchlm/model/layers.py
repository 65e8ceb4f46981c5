"""Beside the forward pass (transformer.py): the primitive layers it is built from, the
written-out reference kernels, and the variants a config can pick instead of the
defaults, each behind the same signature as what it replaces.

- Primitives: ``Linear`` (a plain row-major (out, in) weight) and ``Embedding``.
- Reference kernels: ``softmax``, ``silu``, ``gelu``, ``scaled_dot_product_attention``,
  the textbook formulas, and ``softcap`` (logit soft-capping). The model runs them with
  ``impl="reference"``; by default it runs torch's fused kernels for the same math
  (tests/model prove they agree).
- Variants: ``LayerNorm`` and ``DyT`` (for RMSNorm), ``GeluMLP`` and ``ReLU2MLP`` (for
  SwiGLU), ``CoPE`` (for RoPE).

Inference-only speed-ups (the thread-split product, int8) are not here: they are
swapped in by ``model.inference.prepare_for_inference``, so training never sees them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMPLS = ("fast", "reference")  # torch's fused kernels, or the formulas written out here

# ------------------------------------------------------------------ primitives


class Linear(nn.Module):
    """y = x W^T (+ b); weight (out_features, in_features), row-major, truncated-normal
    init. Exactly ``F.linear``: decoding layouts belong to ``prepare_for_inference``."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, std: float = 0.02
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters(std)

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, bias={self.bias is not None}"


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


# ------------------------------------------------------------------ reference kernels


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


def softcap(logits: Tensor, cap: float) -> Tensor:
    """cap * tanh(logits / cap) (Gemma 2, modded-nanogpt): close to the identity for small
    logits, never beyond +-cap, so no logit can grow without bound. Any shape."""
    return cap * torch.tanh(logits / cap)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """softmax(q k^T * scale, masked) v for any leading batch dims (Vaswani et al., 2017).

    q (..., Tq, D), k (..., S, D), v (..., S, Dv), mask bool broadcastable to
    (..., Tq, S) with True where a query may attend. Returns (..., Tq, Dv).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = softmax(scores, dim=-1)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


# ------------------------------------------------------------------ norm variants


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


# ------------------------------------------------------------------ MLP variants


class GeluMLP(nn.Module):
    """down(gelu(up(x))), as in GPT-2 (whose names are c_fc / c_proj). ``impl``:
    "fast" (torch's fused GELU) or "reference" (``gelu`` above)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, std: float = 0.02) -> None:
        super().__init__()
        self.up_proj = Linear(d_model, d_ff, bias, std)
        self.down_proj = Linear(d_ff, d_model, bias, std)
        self.impl = "fast"

    def forward(self, x: Tensor) -> Tensor:  # (..., d_model) -> (..., d_model)
        h = self.up_proj(x)  # (..., d_ff)
        h = gelu(h) if self.impl == "reference" else F.gelu(h, approximate="tanh")
        return self.down_proj(h)


class ReLU2MLP(nn.Module):
    """down(relu(up(x))^2), the squared-ReLU MLP of Primer (So et al., 2021), as in
    modded-nanogpt: two matrices like GELU's, a cheaper activation. ``impl`` is kept for
    ``set_impl``; relu and a square are the same written out or fused."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, std: float = 0.02) -> None:
        super().__init__()
        self.up_proj = Linear(d_model, d_ff, bias, std)
        self.down_proj = Linear(d_ff, d_model, bias, std)
        self.impl = "fast"

    def forward(self, x: Tensor) -> Tensor:  # (..., d_model) -> (..., d_model)
        h = F.relu(self.up_proj(x)).square()  # (..., d_ff)
        return self.down_proj(h)


# ------------------------------------------------------------------ position variant


class CoPE(nn.Module):
    """Contextual position encoding (Golovneva et al., 2024), shared across heads.

    Instead of counting tokens, a query counts what its gates let through: for query i
    and key j, the gate g_ij = sigmoid(q_i . k_j) says whether key j "counts", and the
    position of j seen from i is p_ij = sum over k in [j, i] of g_ik, a real number.
    Learned embeddings e[0..n-1] of integer positions are interpolated at p_ij, and
    q_i . e(p_ij) is added to the attention logit.
    """

    def __init__(self, max_positions: int, head_dim: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.pos_emb = nn.Parameter(torch.zeros(head_dim, max_positions))

    def forward(self, q: Tensor, logits: Tensor) -> Tensor:
        """q (B, H, T, D) and masked attention logits (B, H, T, S), -inf where a query may
        not look, -> the logits plus the position terms (B, H, T, S)."""
        gates = torch.sigmoid(logits)  # masked keys: sigmoid(-inf) = 0, they do not count
        # p_ij = sum_{k >= j} g_ik: a cumulative sum from the right along the keys.
        pos = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.max_positions - 1)
        lo = pos.floor().long()
        hi = pos.ceil().long()
        by_position = q @ self.pos_emb.to(q.dtype)  # (B, H, T, max_positions)
        term_lo = by_position.gather(-1, lo)
        term_hi = by_position.gather(-1, hi)
        w = (pos - lo).to(q.dtype)  # interpolate between the two integer positions
        return logits + term_hi * w + term_lo * (1 - w)
