"""Data: corpora in many formats -> token files -> training batches.

``sources`` and ``readers`` turn files (text, JSON, JSONL, CSV, Parquet, Hugging Face
datasets, built-in corpora) into streamed documents; ``encode.prepare`` encodes them into
``train.bin``/``val.bin`` with ``meta.json`` (``tokens``), split by document (``split``);
``batches`` draws random training windows from the memory-mapped token files.
"""

from scratchlm.data.batches import BatchSampler, fixed_windows, get_batch
from scratchlm.data.encode import prepare
from scratchlm.data.readers import ReadStats
from scratchlm.data.sources import Source, iter_documents, read_pieces, resolve_inputs
from scratchlm.data.tokens import (
    data_fingerprint,
    open_tokens,
    read_meta,
    token_dtype,
    tokenizer_fingerprint,
)

__all__ = [
    "BatchSampler",
    "ReadStats",
    "Source",
    "data_fingerprint",
    "fixed_windows",
    "get_batch",
    "iter_documents",
    "open_tokens",
    "prepare",
    "read_meta",
    "read_pieces",
    "resolve_inputs",
    "token_dtype",
    "tokenizer_fingerprint",
]
