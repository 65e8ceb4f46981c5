"""The tokenizer inside a GGUF file (``tokenizer.*`` metadata), both ways.

llama.cpp's byte-level BPE (``tokenizer.ggml.model = "gpt2"``) reads:

    tokens          one string per embedding row, each byte of an ordinary token written
                    as a character of GPT-2's table (as in Hugging Face's tokenizer.json);
                    a special token as its text. Rows no token uses get a placeholder
                    ``[PAD<id>]`` of type UNUSED, and are dropped again on import.
    token_type      1 normal, 3 control (our special tokens: matched whole, never merged),
                    5 unused
    merges          "a b" in rank order
    pre             the name of the split regex: llama.cpp holds its regexes in its own
                    code, so the file names one it knows. Ours map as in PRE_TOKENIZERS;
                    another pattern has no name and is refused.
    bos / eos / eot ids; a chat model (one with the chat tokens) ends an assistant turn
                    with <|end|>, so that is its eos and eot, and runtimes stop there
    add_bos_token   false: our models never saw a BOS in front of a text
    chat_template   scratchlm.chat_format.CHAT_TEMPLATE, for a chat model

The vocabulary and merges are those of our Hugging Face export (``to_hf_tokenizer_json``),
which refuses what a byte-level table cannot hold and checks the result with ``tokenizers``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from scratchlm.chat_format import CHAT_SPECIAL_TOKENS, CHAT_TEMPLATE, END_OF_TURN
from scratchlm.errors import TokenizerError
from scratchlm.export.hf_tokenizer import EOS_CANDIDATES, PAD_CANDIDATES
from scratchlm.tokenizer import BPETokenizer
from scratchlm.tokenizer.gpt2 import chars_to_token
from scratchlm.tokenizer.hf import check_ignore_merges, to_hf_tokenizer_json
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, GPT4_PATTERN

# Our split pattern -> llama.cpp's pre-tokenizer of the same regex. "llama-bpe" is
# Llama 3's, the GPT-4 (cl100k) pattern written without possessive quantifiers, which
# change nothing there; llama.cpp then also emits a pre-token found whole in the vocab
# without merging it (ignore_merges), checked by check_ignore_merges.
PRE_TOKENIZERS = {GPT2_PATTERN: "gpt-2", GPT4_PATTERN: "llama-bpe"}
PATTERN_OF_PRE = {name: pattern for pattern, name in PRE_TOKENIZERS.items()}
NORMAL, CONTROL, UNUSED = 1, 3, 5
# Free-form facts of our tokenizer (BPETokenizer.metadata), kept as JSON.
METADATA_KEY = "scratchlm.tokenizer.metadata"


def tokenizer_metadata(tok: BPETokenizer, n_rows: int) -> dict[str, Any]:
    """The ``tokenizer.*`` metadata of ``tok`` for a model with ``n_rows`` embedding rows,
    by full key; TokenizerError for a tokenizer llama.cpp would encode differently."""
    if not isinstance(tok, BPETokenizer):
        raise TokenizerError(
            f"only byte-level BPE tokenizers can go into a GGUF file, not {type(tok).__name__}"
        )
    pre = PRE_TOKENIZERS.get(tok.pattern)
    if pre is None:
        shown = tok.pattern if len(tok.pattern) <= 60 else tok.pattern[:57] + "..."
        raise TokenizerError(
            f"the tokenizer's split pattern {shown!r} has no llama.cpp pre-tokenizer: GGUF "
            "supports the gpt2 pattern (as 'gpt-2') and the gpt4 pattern (as 'llama-bpe')"
        )
    if pre == "llama-bpe":
        try:
            check_ignore_merges(tok)
        except TokenizerError as e:
            raise TokenizerError(f"llama.cpp's llama-bpe pre-tokenizer: {e}") from None
    if tok.vocab_size > n_rows:
        raise TokenizerError(
            f"the tokenizer has {tok.vocab_size} ids but the model only {n_rows} embedding "
            "rows: they do not belong together"
        )
    hf = to_hf_tokenizer_json(tok)
    text_of = {tid: text for text, tid in hf["model"]["vocab"].items()}
    specials = tok.special_tokens
    special_ids = set(specials.values())
    tokens, types = [], []
    for tid in range(n_rows):
        text = text_of.get(tid, f"[PAD{tid}]")
        if tid not in text_of and text in hf["model"]["vocab"]:
            raise TokenizerError(f"token {text!r} looks like the placeholder of unused id {tid}")
        tokens.append(text)
        types.append(CONTROL if tid in special_ids else NORMAL if tid in text_of else UNUSED)

    bos = next((specials[t] for t in EOS_CANDIDATES if t in specials), None)
    chat = all(t in specials for t in CHAT_SPECIAL_TOKENS)
    eos = specials[END_OF_TURN] if chat else bos
    pad = next((specials[t] for t in PAD_CANDIDATES if t in specials), None)
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": hf["model"]["merges"],
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
    }
    named = {"bos": bos, "eos": eos, "eot": eos if chat else None, "padding": pad}
    meta.update({f"tokenizer.ggml.{k}_token_id": v for k, v in named.items() if v is not None})
    if chat:
        meta["tokenizer.chat_template"] = CHAT_TEMPLATE
    meta[METADATA_KEY] = json.dumps(tok.metadata, ensure_ascii=False, sort_keys=True)
    return meta


def tokenizer_from_metadata(meta: Mapping[str, Any]) -> BPETokenizer:
    """A BPETokenizer from a GGUF file's ``tokenizer.*`` metadata (full key -> value)."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise TokenizerError(
            f"GGUF tokenizer.ggml.model = {model!r}: scratchlm reads byte-level BPE ('gpt2') only"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PATTERN_OF_PRE:
        raise TokenizerError(
            f"GGUF tokenizer.ggml.pre = {pre!r}: scratchlm knows {', '.join(PATTERN_OF_PRE)}"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens or ())
    merges = meta.get("tokenizer.ggml.merges") or []
    if not isinstance(tokens, list) or len(types) != len(tokens):
        raise TokenizerError("GGUF tokenizer.ggml.tokens / token_type are missing or unequal")
    vocab: dict[int, bytes] = {}
    control: dict[str, int] = {}
    for tid, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind == CONTROL:
            vocab[tid] = text.encode("utf-8")
            control.setdefault(text, tid)
        elif kind == NORMAL:
            vocab[tid] = chars_to_token(text, f"GGUF token {tid}")
        elif kind != UNUSED:
            raise TokenizerError(f"GGUF token {tid} {text!r} has type {kind}: not supported")
    pairs = []
    for rank, merge in enumerate(merges):
        parts = merge.split(" ") if isinstance(merge, str) else []
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"GGUF merge {rank} {merge!r} is not 'a b'")
        where = f"GGUF merge {rank}"
        pairs.append((chars_to_token(parts[0], where), chars_to_token(parts[1], where)))
    metadata = {"imported_from": "gguf"}
    if METADATA_KEY in meta:  # written by scratchlm: the original tokenizer's facts
        try:
            metadata = json.loads(meta[METADATA_KEY])
        except (TypeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"GGUF {METADATA_KEY} is not JSON: {e}") from None
        if not isinstance(metadata, dict):
            raise TokenizerError(f"GGUF {METADATA_KEY} is not a JSON object")
    tok = BPETokenizer(vocab, pairs, list(control), pattern=PATTERN_OF_PRE[pre], metadata=metadata)
    if tok.special_tokens != control or any(tok.vocab[i] != t for i, t in vocab.items()):
        raise TokenizerError("GGUF control tokens repeat another token's text")
    return tok
