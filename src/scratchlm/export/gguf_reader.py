"""``from_gguf``: a GGUF file of architecture ``llama`` or ``gpt2`` as our model and tokenizer.

Reads what ``to_gguf`` writes, and any file within the same limits: a byte-level BPE
tokenizer with a pre-tokenizer scratchlm knows, tensors in F32, F16 or Q8_0 (Q8_0 is
dequantised to float32; F32 and F16 values are taken exactly). The file is untrusted:
its header may declare only so many tensors and metadata entries; gguf-py then
memory-maps it (each array a view of the file, so what it builds is bounded by the file's
size), and every tensor's name, type and shape is checked against the metadata's
configuration, built on the meta device, before any weight is allocated.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchlm.errors import ConfigError, ScratchLMError
from scratchlm.export.gguf_arch import (
    ARCHITECTURES,
    key_map,
    model_config,
    rope_heads,
    unpermute_rows,
)
from scratchlm.export.gguf_quant import dequantize_q8_0
from scratchlm.export.gguf_vocab import tokenizer_from_metadata
from scratchlm.export.keymap import from_hf_tensors
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import BPETokenizer

TYPES = ("F32", "F16", "Q8_0")
# magic, version, tensor count, metadata count (little-endian, as llama.cpp writes).
HEADER = struct.Struct("<4sIQQ")
MAX_TENSORS = 1 << 16  # 12 tensors per layer: thousands of layers
MAX_METADATA = 1 << 12


def from_gguf(path: str | os.PathLike) -> tuple[TransformerLM, BPETokenizer]:
    """``(TransformerLM in eval mode with float32 weights, BPETokenizer)`` from a GGUF file."""
    file = Path(path)
    if not file.is_file():
        raise ScratchLMError(f"{file} is not a file (expected a .gguf file)")
    try:
        import gguf  # an optional extra, imported only when a GGUF file is read
    except ImportError:
        raise ConfigError(
            "GGUF import needs the gguf package: pip install 'scratchlm[gguf]'"
        ) from None
    _check_header(file)
    try:
        reader = gguf.GGUFReader(file)
    except Exception as e:  # gguf-py raises ValueError, struct errors, ... on a bad file
        raise ScratchLMError(f"cannot read {file} as GGUF: {e}") from None
    meta = {name: _value(field, gguf) for name, field in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"{file}: GGUF architecture {arch!r} is not supported; scratchlm reads "
            f"{', '.join(ARCHITECTURES)}"
        )
    tensors = {t.name: t for t in reader.tensors}
    bad = sorted({t.tensor_type.name for t in tensors.values()} - set(TYPES))
    if bad:
        raise ConfigError(
            f"{file}: tensor type(s) {', '.join(bad)} are not supported; scratchlm reads "
            f"{', '.join(TYPES)}"
        )
    tokenizer = tokenizer_from_metadata(meta)
    if "token_embd.weight" not in tensors:
        raise ScratchLMError(f"{file} has no token_embd.weight")
    n_rows = int(tensors["token_embd.weight"].shape[-1])  # GGML order: (d_model, rows)
    if n_rows != len(meta.get("tokenizer.ggml.tokens", ())):
        raise ScratchLMError(
            f"{file}: token_embd.weight has {n_rows} rows but the tokenizer "
            f"{len(meta['tokenizer.ggml.tokens'])} tokens"
        )
    prefix = f"{arch}."
    hparams = {k.removeprefix(prefix): v for k, v in meta.items() if k.startswith(prefix)}
    config = model_config(arch, hparams, n_rows, has_output="output.weight" in tensors)

    with torch.device("meta"):  # shapes without memory: the file's must match before reading
        wanted = TransformerLM(config).state_dict()
    keys = key_map(arch, config)
    extra = sorted(set(tensors) - {m.hf for m in keys})
    if extra:
        raise ScratchLMError(
            f"{file} has tensors a plain {arch} of this configuration does not: "
            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"
        )
    arrays = {}
    for m in keys:
        if m.hf not in tensors:
            raise ScratchLMError(f"{file} lacks the tensor {m.hf} its metadata implies")
        rows = sum(wanted[k].shape[0] for k in m.ours)
        shape = (rows, *wanted[m.ours[0]].shape[1:])
        t = tensors[m.hf]
        found = tuple(int(n) for n in reversed(t.shape))  # GGML lists the fastest dim first
        if found != shape:
            raise ScratchLMError(f"{file}: {m.hf} has shape {found}, the metadata implies {shape}")
        w = _decode(t, shape, gguf)
        heads = rope_heads(arch, m.hf, config)
        arrays[m.hf] = torch.from_numpy(unpermute_rows(w, heads) if heads else w)
    state = from_hf_tensors(arrays, keys, str(file))
    if config.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model = TransformerLM(config)
    model.load_state_dict(state, strict=True)
    return model.float().eval(), tokenizer


def _check_header(file: Path) -> None:
    """Refuse a file whose header declares more tensors or metadata entries than any
    model scratchlm reads has, before gguf-py builds an object per entry."""
    with open(file, "rb") as f:
        head = f.read(HEADER.size)
    if len(head) < HEADER.size or head[:4] != b"GGUF":
        raise ScratchLMError(f"{file} is not a GGUF file (no GGUF header)")
    _, version, n_tensors, n_kv = HEADER.unpack(head)
    if version not in (2, 3):
        raise ScratchLMError(f"{file}: GGUF version {version} is not supported (2 or 3)")
    if n_tensors > MAX_TENSORS or n_kv > MAX_METADATA:
        raise ScratchLMError(
            f"{file} declares {n_tensors:,} tensors and {n_kv:,} metadata entries: more than "
            f"a llama or gpt2 file holds (at most {MAX_TENSORS:,} and {MAX_METADATA:,} here)"
        )


def _decode(t: Any, shape: tuple[int, ...], gguf: Any) -> np.ndarray:
    """One tensor's values as a float32 array of ``shape`` (a copy, off the memory map)."""
    kind = t.tensor_type.name
    if kind == "Q8_0":
        return dequantize_q8_0(np.asarray(t.data).reshape(shape[0], -1), shape[-1])
    dtype = np.float32 if kind == "F32" else np.float16
    data = np.asarray(t.data)
    if data.dtype != dtype or data.size != int(np.prod(shape)):
        raise ScratchLMError(f"GGUF tensor {t.name}: {data.dtype} x {data.size}, expected {kind}")
    return data.reshape(shape).astype(np.float32)


def _value(field: Any, gguf: Any) -> Any:
    """A metadata field's value: a number, a string, or a list of either."""
    types = gguf.GGUFValueType
    kind = field.types[0] if field.types else None

    def one(part: np.ndarray, t: Any) -> Any:
        if t == types.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        if t == types.FLOAT32:
            # The shortest decimal of the float32 (1e-05, not 9.999999747378752e-06):
            # the value as written in a config, which float32 cannot hold exactly.
            return float(str(part[0]))
        value = part.tolist()[0]
        return bool(value) if t == types.BOOL else value

    if kind == types.ARRAY:
        sub = field.types[-1]
        return [one(field.parts[i], sub) for i in field.data]
    if kind is None or not field.data:
        return None
    return one(field.parts[field.data[0]], kind)
