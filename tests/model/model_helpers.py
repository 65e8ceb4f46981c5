"""Helpers shared by the model tests (imported, not fixtures)."""

import torch

from scratchlm.model import TransformerLM


def randomize_neutral_params(model: TransformerLM, seed: int) -> TransformerLM:
    """Give parameters that start at 0 or 1 (depth scales, CoPE position embeddings, the
    output projections of ``zero_init_proj``) random values, so a bug that misuses them
    cannot hide behind the neutral init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if model.depth_scales is not None:
            model.depth_scales.copy_(0.5 + torch.rand(model.depth_scales.shape, generator=gen))
        for layer in model.layers:
            if layer.self_attn.cope is not None:
                pos_emb = layer.self_attn.cope.pos_emb
                pos_emb.copy_(torch.randn(pos_emb.shape, generator=gen))
            if model.config.zero_init_proj:
                for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
                    noise = torch.randn(proj.weight.shape, generator=gen)
                    proj.weight.copy_(model.config.init_std * noise)
    return model
