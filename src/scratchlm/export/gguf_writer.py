"""``to_gguf``: a model and its tokenizer as one GGUF file for llama.cpp, Ollama, LM Studio.

The file holds everything a runtime needs: the architecture's hyperparameters
(``gguf_arch``), the tokenizer with its chat template (``gguf_vocab``), and the weights
under llama.cpp's names in one of three types:

    f32    every tensor as it is (the model's float32 weights, bit for bit)
    f16    2-D weight matrices in float16; norms and biases stay float32, as do GPT-2's
           position embeddings (as llama.cpp's own converter does)
    q8_0   the same 2-D matrices in Q8_0 (``gguf_quant``); a matrix whose rows are not a
           multiple of 32 values cannot be, and is written in float16

The file is written under a temporary name beside ``out`` and renamed into place.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.atomic import naming_write_errors
from scratchlm.errors import ConfigError, OutputExistsError
from scratchlm.export.gguf_arch import (
    architecture_of,
    hyperparameters,
    key_map,
    permute_rows,
    rope_heads,
)
from scratchlm.export.gguf_quant import BLOCK, quantize_q8_0
from scratchlm.export.gguf_vocab import tokenizer_metadata
from scratchlm.export.keymap import to_hf_tensors
from scratchlm.model import TransformerLM
from scratchlm.model.inference import refuse_prepared
from scratchlm.tokenizer import BPETokenizer

DTYPES = ("f32", "f16", "q8_0")
# general.file_type: llama.cpp's LlamaFileType of each choice.
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}
KEPT_F32 = ("position_embd.weight",)  # as llama.cpp's converter: never quantised


def to_gguf(
    model: TransformerLM,
    tokenizer: BPETokenizer,
    out: str | os.PathLike,
    *,
    dtype: str = "f32",
    force: bool = False,
) -> Path:
    """Write ``model`` and ``tokenizer`` as the GGUF file ``out``; returns its path.

    ConfigError for a configuration llama.cpp's ``llama`` / ``gpt2`` cannot compute
    (naming the option) or an unknown ``dtype``; TokenizerError for a tokenizer it would
    encode differently; OutputExistsError for an existing ``out`` unless ``force``.
    """
    check_dtype(dtype)
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"output file {out} exists: choose another or pass --force")
    refuse_prepared(model, "exported")
    c = model.config
    arch = architecture_of(c)  # refuse before anything is computed or written
    meta = tokenizer_metadata(tokenizer, c.vocab_size)
    keys = key_map(arch, c)
    state = {k: v.float() for k, v in model.state_dict().items()}
    tensors = {name: t.numpy() for name, t in to_hf_tensors(state, keys).items()}

    try:
        import gguf  # an optional extra, imported only when a GGUF file is written
    except ImportError:
        raise ConfigError(
            "GGUF export needs the gguf package: pip install 'scratchlm[gguf]'"
        ) from None
    writer = gguf.GGUFWriter(None, arch)
    writer.add_name("scratchlm")
    writer.add_file_type(FILE_TYPES[dtype])
    for key, value in hyperparameters(arch, c).items():
        _add(writer, f"{arch}.{key}", value)
    for key, value in meta.items():
        _add(writer, key, value)
    for name, w in tensors.items():
        heads = rope_heads(arch, name, c)
        if heads is not None:
            w = permute_rows(w, heads)
        data, qtype = _encode(name, w, dtype, gguf)
        writer.add_tensor(name, data, raw_dtype=qtype)

    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    with naming_write_errors(f"the GGUF file {out.name}", out.parent or "."):
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            os.replace(tmp, out)
        except BaseException:
            writer.close()
            tmp.unlink(missing_ok=True)
            raise
    return out


def check_dtype(dtype: str) -> None:
    """ConfigError unless ``dtype`` is one of DTYPES."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown GGUF dtype {dtype!r}: use {', '.join(DTYPES)}")


def _encode(name: str, w: np.ndarray, dtype: str, gguf: Any) -> tuple[np.ndarray, Any]:
    """The bytes of one tensor and its GGML type."""
    matrix = w.ndim == 2 and name not in KEPT_F32
    if dtype == "f32" or not matrix:
        return np.ascontiguousarray(w, dtype=np.float32), gguf.GGMLQuantizationType.F32
    if dtype == "q8_0" and w.shape[1] % BLOCK == 0:
        return quantize_q8_0(w), gguf.GGMLQuantizationType.Q8_0
    return np.ascontiguousarray(w, dtype=np.float16), gguf.GGMLQuantizationType.F16


def _add(writer: Any, key: str, value: Any) -> None:
    """One metadata value, typed as llama.cpp reads it (32-bit integers and floats)."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:  # a list of strings or of (int32) integers
        writer.add_array(key, list(value))
