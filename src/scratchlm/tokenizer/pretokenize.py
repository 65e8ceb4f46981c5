"""Pre-tokenization: how text is cut into pieces before byte-pair merges are applied.

Three layers, applied in this order by both training and encoding:

1. Special tokens (``<|endoftext|>``, chat markers) are cut out first, so no merge ever
   spans a document boundary or contains a special token. Where one special token is a
   prefix of another, the longest one wins.
2. The text between special tokens is split by a regular expression (GPT-2's by default)
   into pre-tokens: words with their leading space, runs of digits, punctuation, spaces.
3. Merges then act inside each pre-token only (see ``train_bpe`` and ``BPETokenizer``).

Streaming needs places where text can be cut into chunks that pre-tokenize exactly as
the whole text would. With the GPT-2 and GPT-4 patterns two kinds of position are such
"safe cuts" (``last_safe_cut`` finds them):

- before ASCII whitespace that follows a letter or digit: no pre-token holds a letter
  or digit followed by whitespace (whitespace only ever *starts* a word pre-token);
- after a newline that has a non-whitespace character on both sides (``X\nY``): both
  patterns end a pre-token there, and the newline pre-tokenizes the same alone.

Other patterns get no safe cuts: streaming then cuts only at special tokens.

A pattern is code: one read from a file is untrusted. A regex can backtrack for minutes
on a few dozen characters (``(?:a|aa)+$|.`` on ``"a" * 30 + "b"``), so only the known
patterns (``PATTERNS``, by name or exact text) run unbounded; any other is stopped after
a time budget that grows with the text (``match_budget``) and fails with a one-line
TokenizerError, unless its user trusts it (``split_text(..., trusted=True)``,
``BPETokenizer(trust_pattern=True)``).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from typing import AnyStr

import regex

from scratchlm.errors import TokenizerError

# GPT-2's split pattern (Radford et al., 2019): contractions, words with an optional
# leading space, numbers, punctuation runs, and whitespace (trailing whitespace before a
# word is left for the word's leading space).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The GPT-4 style pattern (cl100k): case-insensitive contractions, numbers in groups of at
# most three digits, punctuation that keeps trailing newlines, newlines kept apart.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
KNOWN_PATTERNS = frozenset(PATTERNS.values())

# The matching budget of a pattern that is not a known one: a fixed allowance plus one
# per character, generous for any pattern that runs in linear time (a few microseconds
# per character) and a second or so for one that backtracks exponentially.
MATCH_SECONDS = 1.0
MATCH_SECONDS_PER_CHAR = 1e-5

# Safe cuts (see the module docstring), searched from the right; the cut is m.end().
_SAFE_CUT = regex.compile(r"(?r)[\p{L}\p{N}](?=[ \t\r\n])|(?<=\S)\n(?=\S)")
# How far back from the end ``last_safe_cut_bytes`` looks.
_SAFE_CUT_WINDOW = 1 << 16


def resolve_pattern(pattern: str) -> str:
    """Return the regex for a pattern name (``gpt2``, ``gpt4``) or a regex given as is."""
    return PATTERNS.get(pattern, pattern)


def compile_pattern(pattern: str) -> regex.Pattern:
    """Compile a split pattern (a name from ``PATTERNS`` or a regex); TokenizerError
    for one that is not a valid regex."""
    try:
        return regex.compile(resolve_pattern(pattern))
    except (regex.error, TypeError, ValueError) as e:
        raise TokenizerError(
            f"split pattern {_shown(pattern)} is not a valid regular expression ({e}): "
            f"use {' or '.join(PATTERNS)}, or fix the regex"
        ) from None


def is_known_pattern(pattern: str) -> bool:
    """Whether ``pattern`` is one of ``PATTERNS``, by name or exact text."""
    return resolve_pattern(pattern) in KNOWN_PATTERNS


def match_budget(n_chars: int) -> float:
    """Seconds an untrusted pattern may take to split ``n_chars`` characters."""
    return MATCH_SECONDS + n_chars * MATCH_SECONDS_PER_CHAR


def _shown(pattern: str) -> str:
    text = repr(pattern)
    return text if len(text) <= 80 else text[:77] + "..."


def has_safe_cuts(pattern: str) -> bool:
    """Whether the safe-cut rules are proven for this pattern (GPT-2 and GPT-4 styles)."""
    return resolve_pattern(pattern) in (GPT2_PATTERN, GPT4_PATTERN)


def split_text(split: regex.Pattern, text: str, *, trusted: bool = False) -> list[str]:
    """Pre-tokens of ``text``: the pattern's matches, and for a pattern that does not
    match every character, the unmatched runs between them too, so no text is lost.

    A pattern that is not a known one must finish within ``match_budget(len(text))``
    seconds (TokenizerError otherwise), unless ``trusted``."""
    if split.pattern in KNOWN_PATTERNS:
        return split.findall(text)  # these match every character: no gaps to keep
    timeout = None if trusted else match_budget(len(text))
    pieces, pos = [], 0
    try:
        for m in split.finditer(text, timeout=timeout):
            if m.start() > pos:
                pieces.append(text[pos : m.start()])
            if m.end() > m.start():
                pieces.append(m.group())
            pos = m.end()
    except TimeoutError:
        raise TokenizerError(
            f"split pattern {_shown(split.pattern)} took over {timeout:.1f}s on "
            f"{len(text):,} characters: it backtracks without bound on this text; use a "
            "known pattern (gpt2, gpt4) or fix it (a pattern you trust runs unbounded with "
            "BPETokenizer(..., trust_pattern=True))"
        ) from None
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces


def special_token_regex(
    special_tokens: Iterable[str], *, as_bytes: bool = False
) -> regex.Pattern | None:
    """A regex matching any special token, longest first; None when there are none.

    Alternatives are tried in order at each position, so sorting by length (longest
    first) makes ``<|endoftext|><|endoftext|>`` win over its prefix ``<|endoftext|>``.
    With ``as_bytes`` the regex matches the tokens' UTF-8 bytes.
    """
    tokens = sorted({t.encode("utf-8") for t in special_tokens}, key=lambda t: (-len(t), t))
    if not tokens:
        return None
    if as_bytes:
        return regex.compile(b"|".join(regex.escape(t) for t in tokens))
    return regex.compile("|".join(regex.escape(t.decode("utf-8")) for t in tokens))


def split_special(text: str, special: regex.Pattern | None) -> Iterator[tuple[str, bool]]:
    """Yield ``(piece, is_special)`` in order; ordinary pieces are never empty."""
    if special is None:
        if text:
            yield text, False
        return
    start = 0
    for m in special.finditer(text):
        if m.start() > start:
            yield text[start : m.start()], False
        yield m.group(), True
        start = m.end()
    if start < len(text):
        yield text[start:], False


def last_safe_cut(text: str, end: int) -> int | None:
    """The largest safe cut ``0 < p <= end`` of ``text`` (see the module docstring): both
    parts pre-tokenize exactly like the whole. Looks at most 64 Ki characters back from
    ``end``; None if there is none there."""
    m = _SAFE_CUT.search(text, max(0, end - _SAFE_CUT_WINDOW), max(0, end))
    return None if m is None else m.end()


def last_safe_cut_bytes(data: bytes, end: int) -> int | None:
    """``last_safe_cut`` for UTF-8 bytes (64 KiB back from ``end`` at most)."""
    start = max(0, end - _SAFE_CUT_WINDOW)
    while 0 < start < end and data[start] & 0xC0 == 0x80:  # start on a character
        start += 1
    while start < end < len(data) and data[end] & 0xC0 == 0x80:  # end on one too
        end -= 1
    # surrogateescape keeps invalid bytes one-to-one, so offsets map back exactly.
    text = data[start:end].decode("utf-8", errors="surrogateescape")
    cut = last_safe_cut(text, len(text))
    if cut is None:
        return None
    return start + len(text[:cut].encode("utf-8", errors="surrogateescape"))


def find_cut(
    buf: AnyStr, special: regex.Pattern | None, max_special_len: int, safe_cuts: bool = True
) -> int | None:
    """Where to cut a growing buffer so that both parts tokenize like the whole, or None.

    ``buf`` (str or UTF-8 bytes) starts at a true boundary and may continue past its end.
    A special-token match that starts at least ``max_special_len`` units before the end
    is complete and final, so the position after it is a true boundary; with
    ``safe_cuts``, a safe cut (see ``last_safe_cut``) later than that and equally far
    from the end is one too. The latest is returned, keeping chunks as large as possible.
    """
    limit = len(buf) - max_special_len if special is not None else len(buf)
    if limit <= 0:
        return None
    cut = None
    if special is not None:
        for m in special.finditer(buf):
            if m.start() >= limit:
                break
            cut = m.end()
    if safe_cuts:
        find_safe = last_safe_cut_bytes if isinstance(buf, bytes) else last_safe_cut
        safe = find_safe(buf, limit)
        if safe is not None and (cut is None or safe > cut):
            cut = safe
    return cut


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing invalid bytes with U+FFFD; returns ``(text, n_bad_bytes)``."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    # Walk the errors one at a time: memoryview slices copy nothing, so this stays linear.
    view, pos, bad, parts = memoryview(data), 0, 0, []
    while pos < len(data):
        try:
            text, _ = codecs.utf_8_decode(view[pos:], "strict", True)
            parts.append(text)
            break
        except UnicodeDecodeError as e:
            parts.append(codecs.utf_8_decode(view[pos : pos + e.start], "strict", True)[0])
            parts.append("\ufffd")
            bad += e.end - e.start
            pos += e.end
    return "".join(parts), bad
