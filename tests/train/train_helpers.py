"""Shared settings of the training tests."""

# A model small enough to train a few dozen steps in about a second.
TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "d_ff": 64}
