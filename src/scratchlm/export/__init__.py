"""Export to and import from the formats the rest of the ecosystem reads.

``to_hf`` / ``from_hf``: Hugging Face transformers folders (Llama and GPT-2 architectures).
``to_gguf`` / ``from_gguf``: GGUF files for llama.cpp, Ollama and LM Studio (``llama`` and
``gpt2``); the ``gguf`` package is needed only when a file is written or read.
"""

from scratchlm.export.gguf_reader import from_gguf
from scratchlm.export.gguf_writer import DTYPES as GGUF_DTYPES
from scratchlm.export.gguf_writer import check_dtype as check_gguf_dtype
from scratchlm.export.gguf_writer import to_gguf
from scratchlm.export.hf import architecture_for, from_hf, to_hf

__all__ = [
    "GGUF_DTYPES",
    "architecture_for",
    "check_gguf_dtype",
    "from_gguf",
    "from_hf",
    "to_gguf",
    "to_hf",
]
