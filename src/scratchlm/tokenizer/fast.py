"""The tiktoken fast path: the same ids as ``BPETokenizer``'s pure-Python encoder, faster.

tiktoken does not use a merge list. Inside a pre-token it repeatedly joins the adjacent
pair whose *concatenation* has the lowest rank in the vocabulary. Our encoder joins the
adjacent pair with the lowest *merge* rank. With ranks = token ids the two agree when:

1. the pattern is one whose regex semantics tiktoken shares (GPT-2 and GPT-4 styles);
2. every ordinary token is a single byte or the result of exactly one merge, and ids of
   merged tokens increase in merge order (so "rank of a+b" = "rank of merge (a, b)");
3. for every merged token t = a + b, tiktoken's own procedure on t's bytes, using only
   tokens older than t, ends in exactly the two parts (a, b).

Why 3 suffices: when tiktoken joins parts x and y into t inside a longer word, no earlier
join crossed the edges of t's span, so the joins inside that span happened in the same
order as on t alone, and condition 3 says they leave (a, b) = (x, y). So every join
tiktoken makes is a merge we would make, and it is the lowest-ranked one available.
Where a condition fails, the tokenizer keeps the pure-Python encoder.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Protocol

import numpy as np

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, GPT4_PATTERN

TIKTOKEN_PATTERNS = (GPT2_PATTERN, GPT4_PATTERN)


class MergeTables(Protocol):
    """What the fast path reads of a ``BPETokenizer`` (which imports this module, so it is
    described here rather than imported)."""

    pattern: str
    vocab: dict[int, bytes]
    merges: list[tuple[bytes, bytes]]

    @property
    def special_tokens(self) -> dict[str, int]: ...


class TiktokenEncoder:
    """Encodes with tiktoken. Special tokens are handled by tiktoken too (in Rust) unless
    one special token is a prefix of another: tiktoken does not promise the longest
    match there, so then ``BPETokenizer.encode`` splits them out first, exactly as on
    the Python path, and hands the text between them to ``ordinary``.
    """

    def __init__(self, ordinary, with_specials, special_ids: dict[str, int]) -> None:
        self.ordinary = ordinary  # a tiktoken.Encoding without special tokens
        self.with_specials = with_specials  # the same with them, or None
        self.special_ids = special_ids

    def handles(self, text: str) -> bool:
        """False for text the pure-Python path must encode: text holding lone surrogates
        (an error there; tiktoken would silently replace them) or characters that are
        unassigned in older Unicode tables. tiktoken's regex engine ships its own,
        older tables than the ``regex`` module, so a letter added in a recent Unicode
        version (U+0558, say) may split differently there. Python's ``unicodedata``
        stands in for the older tables."""
        if text.isascii():
            return True
        table = _unassigned_or_surrogate()
        step = 1 << 20  # bounded memory: 4 bytes per character of one slice
        for k in range(0, len(text), step):
            piece = text[k : k + step].encode("utf-32-le", "surrogatepass")
            if table[np.frombuffer(piece, dtype=np.uint32)].any():
                return False
        return True

    def encode(self, text: str, allow_special: bool) -> list[int]:
        """All of ``text`` in tiktoken. With ``allow_special`` this needs
        ``with_specials``; otherwise the caller splits out special tokens itself."""
        if not allow_special:
            return self.ordinary.encode_ordinary(text)
        assert self.with_specials is not None, "nested special tokens: split them first"
        return self.with_specials.encode(text, allowed_special="all", disallowed_special=())


@functools.cache
def _unassigned_or_surrogate() -> np.ndarray:
    """bool (0x110000,): code points that Python's Unicode tables call unassigned (Cn)
    or that are surrogates (Cs). Built once per process: it visits every code point."""
    category = unicodedata.category
    return np.fromiter(
        (category(chr(cp)) in ("Cn", "Cs") for cp in range(0x110000)),
        dtype=bool,
        count=0x110000,
    )


def tiktoken_incompatibility(tok: MergeTables) -> str | None:
    """Why tiktoken could give other ids than ``tok``'s own encoder, or None if it can't."""
    if tok.pattern not in TIKTOKEN_PATTERNS:
        return "the split pattern is not one of the GPT-2/GPT-4 patterns tiktoken shares"
    special_ids = set(tok.special_tokens.values())
    ordinary = {i: t for i, t in tok.vocab.items() if i not in special_ids}
    id_of = {t: i for i, t in ordinary.items()}
    if len(id_of) != len(ordinary):
        return "two ordinary tokens have the same bytes"
    made_by: dict[int, tuple[int, int]] = {}
    last = -1
    for a, b in tok.merges:
        merged = id_of[a + b]
        if merged in made_by:
            return f"token {a + b!r} is made by two different merges"
        if merged <= last:
            return "ids of merged tokens do not increase in merge order"
        made_by[merged] = (id_of[a], id_of[b])
        last = merged
    for tid, token in ordinary.items():
        if len(token) > 1 and tid not in made_by:
            return f"token {token!r} is neither a single byte nor made by a merge"
    for tid, pair in made_by.items():
        if _rank_bpe(ordinary[tid], id_of, max_rank=tid) != list(pair):
            return f"token {ordinary[tid]!r} would be built from other parts by tiktoken"
    return None


def _rank_bpe(data: bytes, id_of: dict[bytes, int], max_rank: int) -> list[int]:
    """tiktoken's procedure: join the adjacent pair whose concatenation has the lowest
    rank (below ``max_rank``), leftmost first, until none is left."""
    parts = [bytes([b]) for b in data]
    while len(parts) > 1:
        best, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            rank = id_of.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best:
                best, best_i = rank, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [id_of[p] for p in parts]


def build_tiktoken_encoder(tok: MergeTables, *, required: bool = False) -> TiktokenEncoder | None:
    """A TiktokenEncoder for ``tok``, or None when tiktoken is missing or could differ.

    With ``required`` those cases raise TokenizerError instead.
    """
    try:
        import tiktoken  # an optional extra: imported only where the fast path is built
    except ImportError:
        if required:
            raise TokenizerError(
                "use_tiktoken=True but tiktoken is not installed: pip install tiktoken"
            ) from None
        return None
    reason = tiktoken_incompatibility(tok)
    if reason is not None:
        if required:
            raise TokenizerError(f"tiktoken cannot encode for this tokenizer: {reason}")
        return None
    specials = tok.special_tokens
    ranks = {t: i for i, t in tok.vocab.items() if i not in set(specials.values())}
    name = f"scratchlm-{len(ranks)}"
    ordinary = tiktoken.Encoding(
        name, pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens={}
    )
    nested = any(a != b and b.startswith(a) for a in specials for b in specials)
    with_specials = None
    if specials and not nested:
        with_specials = tiktoken.Encoding(
            name, pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=specials
        )
    return TiktokenEncoder(ordinary, with_specials, specials)
