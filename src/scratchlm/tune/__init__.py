"""Tuning a model you already have: preference tuning (DPO)."""
