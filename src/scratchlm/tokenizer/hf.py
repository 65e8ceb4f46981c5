"""Hugging Face's ``tokenizer.json`` for the byte-level BPE tokenizer, both ways.

It stores tokens as strings, each byte written as one printable character of GPT-2's
table (``gpt2.bytes_to_unicode``), and puts a BPE model (vocab + merges) inside a
pipeline: normalizer -> pre-tokenizer -> model -> post-processor, plus a decoder. The
folder around it (``tokenizer_config.json`` with the chat template, the special-tokens
map) is written one layer up, by ``scratchlm.export.hf_tokenizer``.

Our encoder and Hugging Face's agree when the pipeline is: no normalizer; pre-tokenizer
``Split(our regex, "Isolated")`` then ``ByteLevel(use_regex=false)``, which turns each
piece's UTF-8 bytes into table characters; a BPE model that applies the lowest-ranked
merge first; special tokens as ``added_tokens`` matched before everything else; and the
``ByteLevel`` decoder, which maps the characters back to bytes and decodes them as UTF-8
with U+FFFD for invalid bytes, as ``BPETokenizer.decode`` does. Whatever a file holds
beyond that is refused with a TokenizerError naming it, never silently approximated.

One difference no file can remove: HF runs the split regex in Oniguruma, whose Unicode
tables are older than those of the ``regex`` module we (and tiktoken) use. Characters
assigned after Unicode 14 (17,480 code points, e.g. CJK Extension J) are "unassigned"
there, not letters, so text holding them can split, and so encode, differently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import regex

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.gpt2 import byte_tables, chars_to_token, token_to_chars
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN

# The fixed parts of an exported tokenizer.json (see the module docstring).
BYTE_LEVEL = dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=False)
ADDED_TOKEN_FLAGS = dict(
    single_word=False, lstrip=False, rstrip=False, normalized=False, special=True
)
BPE_OPTIONS = dict(
    type="BPE",
    dropout=None,
    unk_token=None,
    continuing_subword_prefix=None,
    end_of_word_suffix=None,
    fuse_unk=False,
    byte_fallback=False,
    ignore_merges=False,
)
# Text the exported file is checked on when `tokenizers` is installed: every script,
# whitespace and punctuation class the split patterns treat differently.
PROBE_TEXT = (
    "Hello world! It's 'DON'T' we'll I'M ſ K\u212a 1234567 3.14159 x=[1,2];\n"
    "\tdef f(a, b):\r\n        return a  +  b  # note\n\n\n"
    "   \u00a0\u2003\u3000end \x85\u2028\x1c\n"
    "日本語のテキスト、です。 한국어 Ελληνικά русский عربى हिन्दी é e\u0301 ﬁ Ǆ ½ ²\n"
    "🤖👍🏽 👩\u200d💻 \x00\x01\x7f \ufeff \U0001f600!!! ... --- ???\n"
)


# ------------------------------------------------------------ Hugging Face export


def to_hf_tokenizer_json(tok: BPETokenizer, *, verify: bool = True) -> dict[str, Any]:
    """The Hugging Face ``tokenizer.json`` of ``tok``; the ids HF gives are ours.

    Raises TokenizerError for what HF cannot represent identically. With ``verify`` and
    the ``tokenizers`` package installed, the result is loaded there and must encode
    ``PROBE_TEXT`` (plus every special token) to our ids.
    """
    if not isinstance(tok, BPETokenizer):
        raise TokenizerError(
            "only byte-level BPE tokenizers can be exported to Hugging Face, not "
            f"{type(tok).__name__}"
        )
    u2b = byte_tables()[1]
    special_of = {tid: content for content, tid in tok.special_tokens.items()}
    vocab: dict[str, int] = {}
    for tid, token in sorted(tok.vocab.items()):
        # A special token is stored as its text: HF gives an added token the id of the
        # vocab entry spelled like it and ignores the "id" written in added_tokens.
        key = special_of[tid] if tid in special_of else token_to_chars(token)
        if key in vocab:
            raise TokenizerError(
                f"ids {vocab[key]} and {tid} are the same token {token!r}; a Hugging Face "
                "vocabulary maps each token to one id, so this tokenizer cannot be exported"
            )
        vocab[key] = tid
    for content in tok.special_tokens:
        # HF's ByteLevel decoder reads a token made only of table characters as byte codes.
        if all(c in u2b for c in content) and bytes(u2b[c] for c in content) != content.encode():
            raise TokenizerError(
                f"special token {content!r} would decode differently in Hugging Face (its "
                "characters are read as GPT-2 byte codes): rename it, e.g. with ASCII only"
            )
    merges, seen = [], set()
    for pair in tok.merges:
        if pair not in seen:  # our encoder uses a repeated merge's first rank, HF its last
            seen.add(pair)
            merges.append(f"{token_to_chars(pair[0])} {token_to_chars(pair[1])}")
    split = dict(type="Split", pattern={"Regex": tok.pattern}, behavior="Isolated", invert=False)
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": tid, "content": content, **ADDED_TOKEN_FLAGS}
            for content, tid in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, {**BYTE_LEVEL}]},
        "post_processor": None,
        "decoder": {**BYTE_LEVEL},
        "model": {**BPE_OPTIONS, "vocab": vocab, "merges": merges},
    }
    if verify:
        _verify_with_tokenizers(tok, data)
    return data


def _verify_with_tokenizers(tok: BPETokenizer, data: dict[str, Any]) -> None:
    """Refuse an export that the ``tokenizers`` package (if installed) reads differently:
    a split regex its Oniguruma engine rejects or matches otherwise, say."""
    try:
        from tokenizers import Tokenizer  # an optional extra: the check runs only with it
    except ImportError:
        return
    try:
        hf = Tokenizer.from_str(json.dumps(data))
    except Exception as e:  # tokenizers raises plain Exception for a bad regex
        raise TokenizerError(f"Hugging Face tokenizers cannot load the export: {e}") from None
    for text in [*PROBE_TEXT.splitlines(keepends=True), "".join(tok.special_tokens)]:
        ours, theirs = tok.encode(text), hf.encode(text, add_special_tokens=False).ids
        if ours != theirs:
            raise TokenizerError(
                f"Hugging Face tokenizers encodes {text!r} to {theirs}, scratchlm to {ours}: "
                f"the split pattern {tok.pattern!r} does not work the same in both"
            )


# ------------------------------------------------------------ Hugging Face import


def from_hf_tokenizer_json(data: Mapping[str, Any], **kwargs: Any) -> BPETokenizer:
    """A BPETokenizer from a Hugging Face byte-level BPE ``tokenizer.json`` (as a dict).

    Reads ours and the GPT-2 / Llama-3 style: pre-tokenizer ``ByteLevel(use_regex=true)``
    (GPT-2's regex) or ``Split(regex) + ByteLevel(use_regex=false)``. Every added token
    becomes a special token (HF never splits either kind). A post-processor that adds
    tokens (Llama-3's BOS) is kept in ``metadata`` only: ``encode`` equals HF's
    ``add_special_tokens=False``. ``kwargs`` go to BPETokenizer.
    """
    model = data.get("model")
    if not isinstance(model, Mapping) or not isinstance(model.get("vocab"), Mapping):
        raise TokenizerError("Hugging Face tokenizer.json has no model vocabulary")
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise TokenizerError(
            f"Hugging Face {kind} models are not supported: only byte-level BPE is"
        )
    for key, why in (
        ("dropout", "BPE dropout makes encoding random"),
        ("byte_fallback", "byte_fallback is SentencePiece-style, not byte-level"),
        ("continuing_subword_prefix", "a continuing-subword prefix is not byte-level BPE"),
        ("end_of_word_suffix", "an end-of-word suffix is not byte-level BPE"),
    ):
        if model.get(key):
            raise TokenizerError(f"unsupported Hugging Face BPE option {key}={model[key]!r}: {why}")
    normalizer = data.get("normalizer")
    if normalizer is not None and normalizer != {"type": "Sequence", "normalizers": []}:
        raise TokenizerError(
            f"unsupported Hugging Face normalizer {normalizer.get('type')!r}: scratchlm never "
            "changes the text before encoding it"
        )
    pattern = _pattern_of(data.get("pre_tokenizer"))
    decoder = data.get("decoder") or {}
    if decoder.get("type") == "Sequence" and len(decoder.get("decoders", ())) == 1:
        decoder = decoder["decoders"][0]
    if decoder.get("type") != "ByteLevel":
        raise TokenizerError(
            f"unsupported Hugging Face decoder {decoder.get('type')!r}: a byte-level BPE "
            "needs the ByteLevel decoder"
        )
    post = data.get("post_processor") or {}
    steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for step in filter(None, steps):
        if step.get("type") not in ("ByteLevel", "TemplateProcessing"):
            raise TokenizerError(f"unsupported Hugging Face post-processor {step.get('type')!r}")

    added: dict[int, str] = {}
    for entry in data.get("added_tokens") or ():
        flags = [f for f in ("lstrip", "rstrip", "single_word") if entry.get(f)]
        if flags:
            raise TokenizerError(
                f"added token {entry['content']!r} sets {', '.join(flags)}: scratchlm special "
                "tokens match their exact text only"
            )
        added[entry["id"]] = entry["content"]
    vocab: dict[int, bytes] = {}
    for key, tid in model["vocab"].items():
        content = added.get(tid)
        if content is None:
            vocab[tid] = chars_to_token(key, f"vocab entry {key!r} (id {tid})")
        elif key not in (content, token_to_chars(content.encode())):
            raise TokenizerError(f"id {tid} is vocab entry {key!r} and added token {content!r}")
    vocab.update({tid: content.encode() for tid, content in added.items()})
    merges = [_parse_merge(m, i) for i, m in enumerate(model.get("merges") or ())]
    special_bytes = {c.encode(): c for c in added.values()}
    for rank, (a, b) in enumerate(merges):
        if a + b in special_bytes:
            raise TokenizerError(
                f"added token {special_bytes[a + b]!r} is also made by merge {rank}; "
                "scratchlm special tokens cannot be merge results"
            )

    kwargs.setdefault("metadata", {"imported_from": "huggingface tokenizer.json"})
    if steps:
        kwargs["metadata"] = {**kwargs["metadata"], "hf_post_processor": post}
    specials = [added[i] for i in sorted(added)]
    tok = BPETokenizer(vocab, merges, specials, pattern=pattern, **kwargs)
    if tok.special_tokens != {c: i for i, c in added.items()}:
        raise TokenizerError("two added tokens or vocab entries share the same text")
    if model.get("ignore_merges"):
        check_ignore_merges(tok)
    return tok


def _pattern_of(pre: Mapping[str, Any] | None) -> str:
    """The split regex of a byte-level pre-tokenizer."""
    steps = list(pre.get("pretokenizers", ())) if pre and pre.get("type") == "Sequence" else [pre]
    names = [s.get("type") if s else None for s in steps]
    last = steps[-1] or {}
    if last.get("type") != "ByteLevel" or len(steps) > 2:
        raise TokenizerError(
            f"unsupported Hugging Face pre-tokenizer {names}: byte-level BPE needs ByteLevel, "
            "alone or after one Split"
        )
    if last.get("add_prefix_space"):
        raise TokenizerError("ByteLevel add_prefix_space=true changes the text: not supported")
    use_regex = last.get("use_regex", True)
    if len(steps) == 1:
        if not use_regex:
            raise TokenizerError("ByteLevel with use_regex=false and no Split is not supported")
        return GPT2_PATTERN
    split = steps[0]
    if split.get("type") != "Split" or use_regex:
        raise TokenizerError(
            f"unsupported Hugging Face pre-tokenizer {names}: expected Split then "
            "ByteLevel(use_regex=false)"
        )
    if split.get("behavior") != "Isolated" or split.get("invert"):
        raise TokenizerError(
            f"unsupported Split behavior={split.get('behavior')!r} invert={split.get('invert')!r}: "
            "only Isolated, not inverted, matches scratchlm's split"
        )
    pattern = split.get("pattern") or {}
    if "Regex" in pattern:
        return pattern["Regex"]
    if "String" in pattern:
        return regex.escape(pattern["String"])
    raise TokenizerError(f"Split pattern {pattern!r} is neither a Regex nor a String")


def _parse_merge(merge: Any, index: int) -> tuple[bytes, bytes]:
    parts = merge.split(" ") if isinstance(merge, str) else merge
    if not isinstance(parts, list | tuple) or len(parts) != 2 or not all(parts):
        raise TokenizerError(f"model.merges[{index}] = {merge!r}: expected 'a b' or [a, b]")
    where = f"model.merges[{index}]"
    return chars_to_token(parts[0], where), chars_to_token(parts[1], where)


def check_ignore_merges(tok: BPETokenizer) -> None:
    """With ``ignore_merges`` HF emits a pre-token found in the vocab as that token
    without applying merges; that equals our encoding when every token's merges
    rebuild exactly that token."""
    special_ids = set(tok.special_tokens.values())
    for tid, token in tok.vocab.items():
        if tid in special_ids or len(token) < 2:
            continue
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            continue  # not valid UTF-8 alone, so never a whole pre-token
        # _encode_word applies merges only, without the split pattern.
        if tok._encode_word(text) != [tid]:
            raise TokenizerError(
                f"ignore_merges=true and the merges split token {text!r} (id {tid}) into "
                "other tokens: scratchlm cannot encode this vocabulary identically"
            )
