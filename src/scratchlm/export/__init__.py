"""Export to and import from the formats the rest of the ecosystem reads.

``to_hf`` / ``from_hf``: Hugging Face transformers folders (Llama and GPT-2 architectures).
"""

from scratchlm.export.hf import architecture_for, from_hf, to_hf

__all__ = ["architecture_for", "from_hf", "to_hf"]
