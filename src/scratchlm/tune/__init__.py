"""Tuning a model that exists: LoRA adapters (``tune.lora``) and preference tuning (DPO)."""
