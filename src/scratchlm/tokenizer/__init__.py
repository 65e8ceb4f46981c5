"""Byte-level BPE and character tokenizers.

Layers, bottom up: bytes (every string is UTF-8 bytes, so nothing is out of vocabulary)
-> split pattern (``pretokenize``) -> special tokens -> merges (``train_bpe``, ``bpe``).
``load_tokenizer`` / ``save_tokenizer`` (``files``) are the one way in and out of a file;
``Tokenizer`` is the contract the layers above rely on.
"""

from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.char import CharTokenizer
from scratchlm.tokenizer.files import load_tokenizer, save_tokenizer
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, GPT4_PATTERN, PATTERNS
from scratchlm.tokenizer.protocol import Tokenizer
from scratchlm.tokenizer.train_bpe import merge_pairs, merge_pairs_reference, train_bpe

__all__ = [
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "PATTERNS",
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "merge_pairs",
    "merge_pairs_reference",
    "save_tokenizer",
    "train_bpe",
]
