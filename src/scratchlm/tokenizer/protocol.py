"""``Tokenizer``: what every layer above the tokenizer may rely on.

Data preparation, text generation, chat and the chat format take any tokenizer through
this contract (DESIGN.md); ``BPETokenizer`` and ``CharTokenizer`` both satisfy it.
Anything beyond it (merges, the split pattern, tiktoken) is BPE-only and is reached
through ``BPETokenizer`` by the code that needs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol


class Tokenizer(Protocol):
    """Text <-> ids. Byte-level: ``decode(encode(text)) == text`` for any text the
    vocabulary covers; special tokens are never split."""

    @property
    def vocab(self) -> dict[int, bytes]:
        """id -> the bytes the token stands for (special tokens included)."""
        ...

    @property
    def vocab_size(self) -> int:
        """Number of embedding rows a model needs: the largest id plus one."""
        ...

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token -> id."""
        ...

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Text -> ids; with ``allow_special=False`` special tokens are plain text."""
        ...

    def encode_iterable(self, texts: Iterable[str], *, allow_special: bool = True) -> Iterator[int]:
        """The ids of ``"".join(texts)``, streamed with bounded memory."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text."""
        ...

    def id_to_token(self, token_id: int) -> bytes:
        """The bytes of one token (streaming decoders join them)."""
        ...
