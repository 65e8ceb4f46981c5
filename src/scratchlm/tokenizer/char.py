"""CharTokenizer: one id per character, for tiny corpora and for teaching.

The vocabulary is every distinct character of the training text in sorted order, then
the special tokens. It has the same interface as ``BPETokenizer``; a character that was
not in the training text cannot be encoded and raises a clear error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer.pretokenize import special_token_regex, split_special


class CharTokenizer:
    """Character-level tokenizer: ``chars[i]`` is token ``i``, specials follow."""

    def __init__(self, chars: Iterable[str], special_tokens: Iterable[str] | None = None) -> None:
        self.chars: list[str] = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise TokenizerError("CharTokenizer takes single characters")
        self._id_of = {c: i for i, c in enumerate(self.chars)}
        self._special: dict[str, int] = {}
        for token in special_tokens or ():
            if not isinstance(token, str) or not token:
                raise TokenizerError(f"special token {token!r} is invalid: use a non-empty string")
            self._special.setdefault(token, len(self.chars) + len(self._special))
        self._special_re = special_token_regex(self._special)
        self._text_of = {i: c for c, i in self._id_of.items()}
        self._text_of.update({i: t for t, i in self._special.items()})

    @classmethod
    def train(
        cls, texts: Iterable[str], special_tokens: Iterable[str] | None = None
    ) -> CharTokenizer:
        """Build the vocabulary from the characters of ``texts`` (special tokens excluded)."""
        special = special_token_regex(special_tokens or ())
        chars: set[str] = set()
        for text in texts:
            for piece, is_special in split_special(text, special):
                if not is_special:
                    chars.update(piece)
        if not chars:
            raise TokenizerError("cannot build a CharTokenizer from empty text")
        return cls(chars, special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self._special)

    @property
    def vocab(self) -> dict[int, bytes]:
        return {i: t.encode("utf-8") for i, t in self._text_of.items()}

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    def token_to_id(self, token: str) -> int:
        if token in self._special:
            return self._special[token]
        if token not in self._id_of:
            raise TokenizerError(f"{token!r} is not a token of this vocabulary")
        return self._id_of[token]

    def id_to_token(self, token_id: int) -> bytes:
        if token_id not in self._text_of:
            raise TokenizerError(
                f"token id {token_id} is not in the vocabulary (ids 0..{self.vocab_size - 1})"
            )
        return self._text_of[token_id].encode("utf-8")

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        ids: list[int] = []
        for piece, is_special in split_special(text, self._special_re if allow_special else None):
            if is_special:
                ids.append(self._special[piece])
                continue
            try:
                ids.extend(self._id_of[c] for c in piece)
            except KeyError:
                bad = next(c for c in piece if c not in self._id_of)
                raise TokenizerError(
                    f"character {bad!r} (U+{ord(bad):04X}) is not in this CharTokenizer's "
                    "vocabulary; train it on text that contains it, or use a BPE tokenizer"
                ) from None
        return ids

    def encode_batch(self, texts: Iterable[str], *, allow_special: bool = True) -> list[list[int]]:
        return [self.encode(t, allow_special=allow_special) for t in texts]

    def encode_iterable(self, texts: Iterable[str], *, allow_special: bool = True) -> Iterator[int]:
        """Stream ids; a special token split across pieces is still found."""
        keep = max((len(t) for t in self._special), default=1) - 1 if allow_special else 0
        buf = ""
        for text in texts:
            buf += text
            cut = len(buf) - keep
            if cut > 0 and self._special_re is not None and allow_special:
                # Never cut inside a special token that starts before the cut.
                for m in self._special_re.finditer(buf):
                    if m.start() < cut < m.end():
                        cut = m.start()
            if cut > 0:
                yield from self.encode(buf[:cut], allow_special=allow_special)
                buf = buf[cut:]
        if buf:
            yield from self.encode(buf, allow_special=allow_special)

    def decode(self, ids: Iterable[int]) -> str:
        try:
            return "".join(self._text_of[i] for i in ids)
        except KeyError as e:
            raise TokenizerError(
                f"token id {e.args[0]!r} is not in the vocabulary (ids 0..{self.vocab_size - 1})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars), "special_tokens": self._special}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        return cls(data["chars"], list(data["special_tokens"]))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, special_tokens={list(self._special)})"
