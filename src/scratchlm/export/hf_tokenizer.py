"""A Hugging Face tokenizer folder: ``tokenizer.json`` with its config and special-tokens map.

``AutoTokenizer.from_pretrained`` loads the folder and gives our ids. ``tokenizer.json``
itself comes from ``scratchlm.tokenizer.hf``; this module adds what sits above the
tokenizer: the bos / eos / pad names and, for a tokenizer with the chat tokens, the chat
template of ``scratchlm.chat_format``, so ``apply_chat_template`` renders as we do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scratchlm.atomic import atomic_write_text, write_dir_atomically
from scratchlm.chat_format import CHAT_SPECIAL_TOKENS, CHAT_TEMPLATE
from scratchlm.errors import OutputExistsError
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.hf import to_hf_tokenizer_json

# transformers' "no limit" value (``VERY_LARGE_INTEGER``), written when no context length is given.
NO_MAX_LENGTH = int(1e30)
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]")


def hf_tokenizer_files(
    tok: BPETokenizer, *, model_max_length: int | None = None
) -> dict[str, dict[str, Any]]:
    """The JSON objects of a Hugging Face tokenizer folder, by file name:
    ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``. A
    tokenizer with the chat tokens also gets ``chat_template`` (``scratchlm.chat_format``)."""
    data = to_hf_tokenizer_json(tok)
    specials = tok.special_tokens
    eos = next((t for t in EOS_CANDIDATES if t in specials), None)
    pad = next((t for t in PAD_CANDIDATES if t in specials), eos)
    # GPT-2's convention: one <|endoftext|> token separates documents, so it is both
    # bos and eos. No post-processor adds it: HF's ids equal ours. Byte-level BPE can
    # encode any text, so there is no unk token.
    named = {"bos_token": eos, "eos_token": eos, "unk_token": None, "pad_token": pad}
    others = [t for t in specials if t not in named.values()]
    special_map: dict[str, Any] = {k: v for k, v in named.items() if v is not None}
    if others:
        special_map["additional_special_tokens"] = others
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": NO_MAX_LENGTH if model_max_length is None else model_max_length,
        **named,
        "clean_up_tokenization_spaces": False,  # else decode() would remove spaces before "."
        "added_tokens_decoder": {
            str(e["id"]): {k: v for k, v in e.items() if k != "id"} for e in data["added_tokens"]
        },
    }
    if others:
        config["additional_special_tokens"] = others
    if all(t in specials for t in CHAT_SPECIAL_TOKENS):
        # apply_chat_template then gives the ids of render_conversation / render_prompt.
        config["chat_template"] = CHAT_TEMPLATE
    return {
        "tokenizer.json": data,
        "tokenizer_config.json": config,
        "special_tokens_map.json": special_map,
    }


def write_json_files(folder: Path, files: Mapping[str, Any]) -> None:
    """Write each object as ``folder/name``, indented JSON."""
    for name, obj in files.items():
        atomic_write_text(folder / name, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def save_hf_tokenizer(
    tok: BPETokenizer,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    model_max_length: int | None = None,
) -> Path:
    """Write a folder ``transformers.AutoTokenizer.from_pretrained`` loads:
    ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    The folder is built under a temporary name and renamed into place; an existing
    ``out_dir`` is refused unless ``force``. Returns ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and not force:  # refuse before anything is computed
        raise OutputExistsError(f"output directory {out} exists: choose another or pass --force")
    files = hf_tokenizer_files(tok, model_max_length=model_max_length)
    return write_dir_atomically(out, lambda tmp: write_json_files(tmp, files), force=force)
