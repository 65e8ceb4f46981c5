"""BPETokenizer: byte-level BPE encoding and decoding with special tokens.

Encoding a text: cut out special tokens, split the rest with the pre-tokenization
pattern, and inside each pre-token start from its UTF-8 bytes and apply merges, always
the earliest-learned (lowest-rank) merge available next, until none applies. Decoding
joins the tokens' bytes and decodes them as UTF-8.

Words repeat a lot in real text, so pre-token encodings are cached; when ``tiktoken`` is
installed and provably gives the same ids (see ``fast.py``), it encodes instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer.fast import build_tiktoken_encoder
from scratchlm.tokenizer.pretokenize import (
    GPT2_PATTERN,
    compile_pattern,
    find_cut,
    has_safe_cuts,
    resolve_pattern,
    special_token_regex,
    split_special,
    split_text,
)
from scratchlm.tokenizer.train_bpe import apply_merge

# Pre-token cache size: beyond this many distinct pre-tokens the cache starts over.
CACHE_SIZE = 1 << 18
# encode_iterable encodes its buffer once it holds this many characters.
STREAM_BUFFER = 1 << 16


class BPETokenizer:
    """A byte-level BPE tokenizer.

    Args:
        vocab: id -> token bytes. Any id assignment works (GPT-2's single bytes are not
            ids 0-255), but every single byte must be in it.
        merges: the merges in the order they were learned; ``a + b`` must be in vocab.
        special_tokens: strings that always encode to one id; those missing from
            ``vocab`` are appended after its largest id.
        pattern: the pre-tokenization regex, or a name from ``PATTERNS``.
        use_tiktoken: None = use tiktoken when installed and equivalent; False = never.
        metadata: free-form facts saved with the tokenizer (training settings).
        trust_pattern: run a pattern that is not one of ``PATTERNS`` without a time
            limit (by default it must split each text within ``match_budget``, since
            a pattern read from a file can backtrack for minutes; see pretokenize).
    """

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Iterable[str] | None = None,
        *,
        pattern: str = GPT2_PATTERN,
        use_tiktoken: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
        trust_pattern: bool = False,
    ) -> None:
        self.vocab: dict[int, bytes] = {int(i): bytes(t) for i, t in vocab.items()}
        self.merges: list[tuple[bytes, bytes]] = [(bytes(a), bytes(b)) for a, b in merges]
        self.pattern = resolve_pattern(pattern)
        self.metadata: dict[str, Any] = dict(metadata or {})

        # Special tokens: reuse the vocab entry with the same bytes, else append one
        # (also when those bytes are an ordinary token that merges produce or use).
        self._special: dict[str, int] = {}
        by_bytes = {t: i for i, t in sorted(self.vocab.items(), reverse=True)}
        ordinary = [bytes([b]) for b in range(256)] + [
            t for a, b in self.merges for t in (a, b, a + b)
        ]
        for t in ordinary:
            by_bytes.pop(t, None)
        for token in special_tokens or ():
            if not isinstance(token, str) or not token:
                raise TokenizerError(f"special token {token!r} is invalid: use a non-empty string")
            if token in self._special:
                continue
            tid = by_bytes.get(token.encode("utf-8"))
            if tid is None or tid in self._special.values():
                tid = max(self.vocab) + 1
                self.vocab[tid] = token.encode("utf-8")
            self._special[token] = tid
        special_ids = set(self._special.values())
        # bytes -> id of the ordinary (non-special) tokens; the lowest id wins a tie.
        self._id_of = {
            t: i for i, t in sorted(self.vocab.items(), reverse=True) if i not in special_ids
        }

        missing = [b for b in range(256) if bytes([b]) not in self._id_of]
        if missing:
            raise TokenizerError(
                f"vocab lacks {len(missing)} single byte(s) (first: {missing[0]:#04x}); a "
                "byte-level BPE vocab must contain all 256 bytes"
            )
        self._byte_ids = [self._id_of[bytes([b])] for b in range(256)]
        # (left id, right id) -> (rank, merged id)
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            try:
                pair, merged = (self._id_of[a], self._id_of[b]), self._id_of[a + b]
            except KeyError:
                raise TokenizerError(
                    f"merge {rank} ({a!r}, {b!r}) uses a token missing from the vocab"
                ) from None
            self._ranks.setdefault(pair, (rank, merged))

        self._split = compile_pattern(self.pattern)
        self._trust_pattern = trust_pattern
        self._safe_cuts = has_safe_cuts(self.pattern)
        self._special_re = special_token_regex(self._special)
        self._max_special = max((len(t) for t in self._special), default=0)
        self._cache: dict[str, list[int]] = {}
        self._fast = None
        if use_tiktoken is not False:
            self._fast = build_tiktoken_encoder(self, required=bool(use_tiktoken))

    # ----------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        """Number of embedding rows a model needs: the largest id plus one."""
        return max(self.vocab) + 1

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token -> id."""
        return dict(self._special)

    @property
    def uses_tiktoken(self) -> bool:
        return self._fast is not None

    def token_to_id(self, token: str | bytes) -> int:
        """The id of a special token, or of a token given as its text or bytes."""
        if isinstance(token, str) and token in self._special:
            return self._special[token]
        key = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        if key not in self._id_of:
            raise TokenizerError(f"{token!r} is not a token of this vocabulary")
        return self._id_of[key]

    def id_to_token(self, token_id: int) -> bytes:
        """The bytes of one token."""
        try:
            return self.vocab[token_id]
        except KeyError:
            raise TokenizerError(
                f"token id {token_id} is not in the vocabulary (ids 0..{self.vocab_size - 1})"
            ) from None

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Text -> ids. With ``allow_special=False`` special tokens are encoded as the
        plain text they look like."""
        special = self._special_re if allow_special else None
        fast = self._fast if self._fast is not None and self._fast.handles(text) else None
        if fast is not None and (special is None or fast.with_specials is not None):
            return fast.encode(text, special is not None)  # all in tiktoken, specials too
        ids: list[int] = []
        for piece, is_special in split_special(text, special):
            if is_special:
                ids.append(self._special[piece])
            elif fast is not None:
                ids.extend(fast.ordinary.encode_ordinary(piece))
            else:
                self._encode_ordinary(piece, ids)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, with no special-token handling (the pure-Python path)."""
        ids: list[int] = []
        self._encode_ordinary(text, ids)
        return ids

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        cache = self._cache
        for word in split_text(self._split, text, trusted=self._trust_pattern):
            ids = cache.get(word)
            if ids is None:
                ids = self._encode_word(word)
                if len(cache) >= CACHE_SIZE:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _encode_word(self, word: str) -> list[int]:
        """Apply merges inside one pre-token, lowest rank first."""
        try:
            data = word.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"text contains a lone surrogate {word[e.start]!r} (U+{ord(word[e.start]):04X}), "
                "which is not valid Unicode; fix the text's encoding before tokenizing"
            ) from None
        ids = [self._byte_ids[b] for b in data]
        ranks = self._ranks
        while len(ids) > 1:
            best = None
            for pair in itertools.pairwise(ids):
                found = ranks.get(pair)
                if found is not None and (best is None or found[0] < best[1][0]):
                    best = (pair, found)
            if best is None:
                break
            pair, (_, merged) = best
            ids = apply_merge(ids, pair, merged)
        return ids

    def encode_batch(self, texts: Iterable[str], *, allow_special: bool = True) -> list[list[int]]:
        """Encode several texts."""
        return [self.encode(t, allow_special=allow_special) for t in texts]

    def encode_iterable(self, texts: Iterable[str], *, allow_special: bool = True) -> Iterator[int]:
        """Stream ids for text arriving in pieces (the lines of a file, say).

        The ids equal ``encode("".join(texts))`` while memory stays bounded: the buffer is
        encoded up to the last cut point where both parts tokenize like the whole.
        """
        special = self._special_re if allow_special else None
        max_special = self._max_special if allow_special else 0
        buf = ""
        next_try = STREAM_BUFFER
        for text in texts:
            buf += text
            if len(buf) < next_try:
                continue
            cut = find_cut(buf, special, max_special, self._safe_cuts)
            if cut:
                yield from self.encode(buf[:cut], allow_special=allow_special)
                buf = buf[cut:]
            # Text with no cut point (no spaces, newlines or special tokens) must stay
            # whole to give the same ids: look again only once it has grown.
            next_try = max(STREAM_BUFFER, len(buf) + STREAM_BUFFER // 2)
        if buf:
            yield from self.encode(buf, allow_special=allow_special)

    # ------------------------------------------------------------------ decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes they stand for."""
        vocab = self.vocab
        ids = ids if isinstance(ids, list) else list(ids)
        step = 1 << 16  # join in slices: one list of 10M bytes objects costs ~80 B/token
        try:
            return b"".join(
                [b"".join([vocab[i] for i in ids[k : k + step]]) for k in range(0, len(ids), step)]
            )
        except (KeyError, TypeError):
            bad = next(i for i in ids if i not in vocab)
            raise TokenizerError(
                f"token id {bad!r} is not in the vocabulary (ids 0..{self.vocab_size - 1})"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 become U+FFFD; never raises for
        ids in the vocabulary."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={list(self._special)})"
        )
