"""Attention: the readable formula against PyTorch's fused kernel, the layer's two
paths against each other and against a per-head reference written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from scratchlm.config import ModelConfig
from scratchlm.model import (
    KVCache,
    MultiHeadSelfAttention,
    RotaryEmbedding,
    causal_mask,
    scaled_dot_product_attention,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}


def assert_close_scaled(got, expected, name=""):
    """Agree to 1e-5 relative to the tensor's largest entry: weight gradients sum over
    every token and reach tens, where float32 rounding alone is ~1e-5 absolute."""
    scale = max(1.0, expected.abs().max().item())
    assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def random_mask(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A random boolean mask with at least one allowed key per query, and the first
    query row allowed exactly one key."""
    mask = torch.rand(shape, generator=gen) < 0.5
    S = shape[-1]
    keep = torch.randint(0, S, shape[:-1], generator=gen)
    mask |= F.one_hot(keep, S).bool()  # every row sees at least one key
    mask[..., 0, :] = False
    mask[..., 0, S // 2] = True  # a row with a single allowed key
    return mask


# ------------------------------------------------------------------ the readable formula


SHAPES = [
    # (q shape, k shape, v last dim)
    ((2, 3, 5, 8), (2, 3, 5, 8), 8),  # (B, H, T, D)
    ((4, 7, 16), (4, 7, 16), 16),  # one leading dim
    ((6, 4), (9, 4), 5),  # no leading dims, Tq != S, Dv != D
    ((2, 2, 3, 4, 6), (2, 2, 3, 10, 6), 3),  # three leading dims
    ((1, 1, 1, 8), (1, 1, 12, 8), 8),  # one query over a cache of keys
]


@pytest.mark.parametrize(("q_shape", "k_shape", "dv"), SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_readable_sdpa_matches_torch_forward_and_backward(gen, q_shape, k_shape, dv, masked):
    q = torch.randn(q_shape, generator=gen)
    k = torch.randn(k_shape, generator=gen)
    v = torch.randn((*k_shape[:-1], dv), generator=gen)
    mask = random_mask((*q_shape[:-1], k_shape[-2]), gen) if masked else None
    grad_out = torch.randn((*q_shape[:-1], dv), generator=gen)

    ours = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = scaled_dot_product_attention(*ours, mask=mask)
    expected = F.scaled_dot_product_attention(*ref, attn_mask=mask)
    assert out.shape == expected.shape
    assert_close(out, expected, **TOL)
    (out * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    for a, b in zip(ours, ref, strict=True):
        assert_close(a.grad, b.grad, **TOL)


def test_readable_sdpa_broadcast_mask_and_scale(gen):
    q, k, v = (torch.randn(2, 3, 5, 8, generator=gen) for _ in range(3))
    mask = random_mask((5, 5), gen)  # (T, S) broadcast over batch and heads
    out = scaled_dot_product_attention(q, k, v, mask=mask, scale=0.3)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    assert_close(out, expected, **TOL)


def test_readable_sdpa_by_hand():
    # One query, two keys: scores 1/sqrt(2) * (q.k) = (1, 0) -> weights e/(e+1), 1/(e+1).
    s2 = math.sqrt(2)
    q = torch.tensor([[s2, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[10.0], [20.0]])
    e = math.e
    expected = torch.tensor([[10 * e / (e + 1) + 20 / (e + 1)]])
    assert_close(scaled_dot_product_attention(q, k, v), expected)
    # With the second key masked out, the first gets all the weight.
    mask = torch.tensor([[True, False]])
    assert_close(scaled_dot_product_attention(q, k, v, mask=mask), torch.tensor([[10.0]]))


def test_readable_sdpa_fully_masked_row_gives_zeros_not_nan(gen):
    q, k, v = (torch.randn(2, 4, 8, generator=gen, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    mask[1, 2] = False  # query 2 of batch 1 may attend to nothing
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.equal(out[1, 2], torch.zeros(8))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[1, 2], torch.zeros(8))


# ------------------------------------------------------------------ causal mask


@pytest.mark.parametrize(("t", "s"), [(1, 1), (4, 4), (1, 6), (3, 7), (5, 6)])
def test_causal_mask(t, s):
    mask = causal_mask(t, s)
    assert mask.shape == (t, s)
    assert mask.dtype == torch.bool
    for i in range(t):
        position = s - t + i  # the query is the last t of s positions
        for j in range(s):
            assert bool(mask[i, j]) == (j <= position), (i, j)
    # The last query sees everything.
    assert mask[-1].all()


# ------------------------------------------------------------------ the layer


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=50, context_length=16, d_model=32, n_layers=1, n_heads=4,
                n_kv_heads=2, d_ff=64)  # fmt: skip
    return ModelConfig(**{**base, **overrides})


def make_attention(config: ModelConfig, gen: torch.Generator) -> MultiHeadSelfAttention:
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(config, residual_std=0.02)
    with torch.no_grad():  # larger weights than the init: peaked, not uniform, attention
        for name, p in attn.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return attn


def padding_mask(valid: torch.Tensor, past: int = 0) -> torch.Tensor:
    """valid (B, S) bool -> (B, 1, T, S) with T = S - past: causal, real keys only, and
    every query may see itself (so padding queries keep a finite softmax)."""
    S = valid.shape[1]
    T = S - past
    mask = causal_mask(T, S)[None, None] & valid[:, None, None, :]
    return mask | torch.eye(S, dtype=torch.bool)[past:][None, None]


def mhsa_reference(attn, x, rotary=None, mask=None):
    """The layer written per head with torch.softmax: query head h reads key/value head
    h // (n_heads / n_kv_heads)."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    rep = H // Hkv

    def proj(layer, t):
        out = t @ layer.weight.T
        return out + layer.bias if layer.bias is not None else out

    def rms(t, weight, eps):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + eps) * weight

    q = proj(attn.q_proj, x).view(B, T, H, D).transpose(1, 2)
    k = proj(attn.k_proj, x).view(B, T, Hkv, D).transpose(1, 2)
    v = proj(attn.v_proj, x).view(B, T, Hkv, D).transpose(1, 2)
    if attn.q_norm is not None:
        q = rms(q, attn.q_norm.weight, attn.q_norm.eps)
        k = rms(k, attn.k_norm.weight, attn.k_norm.eps)
    if rotary is not None:
        cos, sin = rotary
        half = D // 2

        def rot(t):
            t1, t2 = t[..., :half], t[..., half:]
            return t * cos + torch.cat((-t2, t1), -1) * sin

        q, k = rot(q), rot(k)
    if mask is None:
        mask = causal_mask(T, T)[None, None]
    mask = mask.expand(B, H, T, T)
    heads = []
    for h in range(H):
        g = h // rep
        scores = q[:, h] @ k[:, g].transpose(-2, -1) / math.sqrt(D)  # (B, T, T)
        scores = scores.masked_fill(~mask[:, h], float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v[:, g])  # (B, T, D)
    y = torch.cat(heads, dim=-1)  # (B, T, H*D), head h in columns h*D:(h+1)*D
    return proj(attn.o_proj, y)


LAYER_CASES = [
    dict(n_kv_heads=4),  # plain multi-head
    dict(n_kv_heads=2),  # grouped-query
    dict(n_kv_heads=1),  # multi-query
    dict(n_kv_heads=2, qk_norm=True),
    dict(n_kv_heads=2, bias=True),
]


@pytest.mark.parametrize("overrides", LAYER_CASES, ids=lambda d: str(d))
@pytest.mark.parametrize("use_rope", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_layer_sdpa_matches_reference_and_per_head_loop(gen, overrides, use_rope, padded):
    config = tiny_config(**overrides)
    attn = make_attention(config, gen)
    B, T = 3, 7
    x = torch.randn(B, T, config.d_model, generator=gen)
    positions = torch.arange(T).expand(B, T)
    mask = None
    if padded:  # left padding: rows with 0, 2 and 5 pad tokens
        pads = torch.tensor([0, 2, 5])
        valid = torch.arange(T)[None] >= pads[:, None]
        mask = padding_mask(valid)
        positions = (torch.arange(T)[None] - pads[:, None]).clamp(min=0)
    rotary = RotaryEmbedding(config.head_dim, 16)(positions, x.dtype) if use_rope else None
    grad_out = torch.randn(B, T, config.d_model, generator=gen)

    grads = {}
    outs = {}
    for impl in ("fast", "reference"):
        attn.impl = impl
        attn.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = attn(xi, rotary, mask)
        (y * grad_out).sum().backward()
        outs[impl] = y.detach()
        grads[impl] = {"x": xi.grad, **{n: p.grad.clone() for n, p in attn.named_parameters()}}

    assert_close(outs["fast"], outs["reference"], **TOL)
    for name in grads["fast"]:
        assert_close_scaled(grads["fast"][name], grads["reference"][name], name)

    # And both equal the per-head loop written above (autograd through it, too).
    attn.zero_grad()
    xr = x.clone().requires_grad_(True)
    expected = mhsa_reference(attn, xr, rotary, mask)
    (expected * grad_out).sum().backward()
    assert_close(outs["fast"], expected.detach(), **TOL)
    assert_close_scaled(grads["fast"]["x"], xr.grad, "x")
    for name, p in attn.named_parameters():
        assert_close_scaled(grads["fast"][name], p.grad, name)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_gqa_equals_mha_with_repeated_kv_heads(gen, impl, n_kv_heads):
    config = tiny_config(n_kv_heads=n_kv_heads)
    gqa = make_attention(config, gen)
    mha = MultiHeadSelfAttention(tiny_config(n_kv_heads=4), residual_std=0.02)
    H, D, d = config.n_heads, config.head_dim, config.d_model
    rep = H // n_kv_heads
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(n_kv_heads, D, d)
            # Query head h reads kv head h // rep: kv head g serves heads g*rep..g*rep+rep-1.
            repeated = torch.cat([w[h // rep] for h in range(H)], dim=0)  # (H*D, d)
            getattr(mha, name).weight.copy_(repeated)
    gqa.impl = mha.impl = impl
    x = torch.randn(2, 6, d, generator=gen)
    rotary = RotaryEmbedding(D, 16)(torch.arange(6).expand(2, 6), x.dtype)
    assert_close(gqa(x, rotary), mha(x, rotary), **TOL)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("position", ["rope", "none", "cope"])
def test_layer_is_causal(gen, impl, position):
    config = tiny_config(position=position)
    attn = make_attention(config, gen)
    attn.impl = impl
    T = 8
    x = torch.randn(1, T, config.d_model, generator=gen)
    rotary = (
        RotaryEmbedding(config.head_dim, 16)(torch.arange(T)[None], x.dtype)
        if position == "rope"
        else None
    )
    y = attn(x, rotary)
    for t in (2, 5, 7):
        changed = x.clone()
        changed[:, t] = torch.randn(config.d_model, generator=gen)
        y2 = attn(changed, rotary)
        assert torch.equal(y2[:, :t], y[:, :t]), t  # the past is untouched, exactly
        assert not torch.allclose(y2[:, t], y[:, t])  # the changed position is not


@pytest.mark.parametrize("overrides", [dict(n_kv_heads=2), dict(n_kv_heads=4, qk_norm=True)])
def test_layer_with_cache_matches_full_pass_for_both_impls(gen, overrides):
    config = tiny_config(**overrides)
    attn = make_attention(config, gen)
    T = 9
    x = torch.randn(2, T, config.d_model, generator=gen)
    table = RotaryEmbedding(config.head_dim, 16)
    full_rotary = table(torch.arange(T).expand(2, T), x.dtype)
    attn.impl = "reference"
    full = attn(x, full_rotary)
    for impl in ("fast", "reference"):
        attn.impl = impl
        cache = KVCache.for_model(config, batch_size=2)
        outs = []
        # Prefill 4, decode 1, then a chunk of 3 with 5 positions already cached, then 1.
        for start, end in [(0, 4), (4, 5), (5, 8), (8, 9)]:
            past = cache.length
            rotary = table(torch.arange(start, end).expand(2, end - start), x.dtype)
            chunk_mask = None
            if past and end - start > 1:
                chunk_mask = causal_mask(end - start, end)[None, None]
            outs.append(attn(x[:, start:end], rotary, chunk_mask, cache, layer=0))
            cache.advance(end - start)
        assert_close(torch.cat(outs, dim=1), full, **TOL, msg=lambda m, impl=impl: f"{impl}: {m}")


def test_cope_matches_written_out_loop(gen):
    config = tiny_config(position="cope", n_kv_heads=2, context_length=6)
    attn = make_attention(config, gen)
    with torch.no_grad():
        attn.cope.pos_emb.copy_(torch.randn(attn.cope.pos_emb.shape, generator=gen))
    B, T, H, D = 1, 5, config.n_heads, config.head_dim
    x = torch.randn(B, T, config.d_model, generator=gen) * 2
    got = attn(x)

    q = (x @ attn.q_proj.weight.T).view(B, T, H, D).transpose(1, 2)[0]
    k = (x @ attn.k_proj.weight.T).view(B, T, 2, D).transpose(1, 2)[0]
    v = (x @ attn.v_proj.weight.T).view(B, T, 2, D).transpose(1, 2)[0]
    emb = attn.cope.pos_emb.detach()  # (D, max_positions)
    n_pos = emb.shape[1]
    heads = []
    for h in range(H):
        g = h // 2
        out = torch.zeros(T, D)
        for i in range(T):
            raw = [float((q[h, i] @ k[g, j]).detach()) / math.sqrt(D) for j in range(i + 1)]
            gates = [1 / (1 + math.exp(-r)) for r in raw]
            logits = []
            for j in range(i + 1):
                p = min(sum(gates[j : i + 1]), n_pos - 1)  # counted keys between j and i
                lo, hi = math.floor(p), math.ceil(p)
                e = emb[:, lo] * (1 - (p - lo)) + emb[:, hi] * (p - lo)
                logits.append(raw[j] + float((q[h, i] @ e).detach()))
            weights = torch.softmax(torch.tensor(logits), 0)
            out[i] = sum(weights[j] * v[g, j] for j in range(i + 1))
        heads.append(out)
    expected = torch.cat(heads, dim=-1)[None] @ attn.o_proj.weight.T
    assert_close(got, expected, **TOL)
