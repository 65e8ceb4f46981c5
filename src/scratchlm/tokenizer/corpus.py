"""Reading a training corpus as a stream of chunks and counting its pre-tokens.

Training never holds the corpus in memory: files are read in chunks of about
``chunk_size`` bytes, cut only where the text before and after the cut pre-tokenizes
exactly as the whole would (after a special token, or before whitespace that follows a
letter or digit; see ``pretokenize.find_cut``). Worker processes turn chunks into
pre-token counts; only those counts are kept, so memory grows with the number of
distinct pre-tokens, not with the corpus.

Pathological text stays bounded too: a buffer with no cut point is cut anyway at
``MAX_BUFFER_CHUNKS`` chunks, and a pre-token longer than ``MAX_PRETOKEN_CHARS`` (a
200 MB line of one letter or of base64) is counted as consecutive pieces of that many
characters from its start, at most ``MAX_PIECES`` of them. The merge loop's work per
merge grows with the length of the words holding the merged pair, and its memory with
the total length of distinct words, so one giant word (or megabytes of random text in
pieces) would take hours and gigabytes; this way any pre-token adds at most 64 K
characters of words. Both rules only change what such text teaches, never ordinary
text, and both are deterministic.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from scratchlm.builtin import builtin_files
from scratchlm.errors import ConfigError, DataError
from scratchlm.tokenizer.pretokenize import (
    GPT2_PATTERN,
    compile_pattern,
    decode_utf8,
    find_cut,
    has_safe_cuts,
    special_token_regex,
    split_text,
)

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
# A buffer with no safe cut in this many chunks is cut anyway (text without any
# "letter + whitespace", such as a huge base64 blob); that one cut may split a pre-token.
MAX_BUFFER_CHUNKS = 16
# Below this many bytes of corpus, worker processes cost more than they save.
MIN_PARALLEL_BYTES = 2 * 1024 * 1024
# Longer pre-tokens are counted in pieces of this many characters, the first MAX_PIECES
# of them (see the docstring); ordinary text has none: a word, a number or a whitespace
# run is far shorter.
MAX_PRETOKEN_CHARS = 4096
MAX_PIECES = 16


def corpus_files(input_path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Resolve a file, a directory (every text file under it, sorted), a built-in corpus
    (``builtin:science``, ``builtin:python``) or a list of them.

    Hidden files and folders are skipped, and so are files whose first 8 KiB hold a NUL
    byte (binary files). Raises DataError for a missing path, an empty directory, or no
    files at all.
    """
    items = [input_path] if isinstance(input_path, str | os.PathLike) else list(input_path)
    if not items:
        raise DataError("no input files given: pass a text file or a directory of them")
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if os.fspath(item).startswith("builtin:") and not path.exists():
            files.extend(builtin_files(os.fspath(item)))
        elif path.is_file():
            if not _looks_like_text(path):  # the same test `prepare` applies
                raise DataError(
                    f"{path} looks binary (a NUL byte in its first 8 KiB): name text files"
                )
            files.append(path)
        elif path.is_dir():
            found = [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and _looks_like_text(p)
            ]
            if not found:
                raise DataError(f"directory {path} holds no text files: point at a text corpus")
            files.extend(found)
        elif path.exists():
            raise DataError(f"{path} is neither a file nor a directory")
        else:
            raise DataError(f"input path {path} does not exist: check the spelling")
    return files


def _looks_like_text(path: Path) -> bool:
    with _reading(path), open(path, "rb") as f:
        return b"\x00" not in f.read(8192)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """An OSError while reading ``path`` (no permission, a disk error) as a DataError
    naming the file."""
    try:
        yield
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def iter_chunks(
    path: Path,
    special_tokens: Sequence[str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    pattern: str = GPT2_PATTERN,
) -> Iterator[bytes]:
    """Yield the bytes of ``path`` in chunks of roughly ``chunk_size`` cut at true
    boundaries, so that counting pre-tokens chunk by chunk equals counting the whole."""
    special = special_token_regex(special_tokens, as_bytes=True)
    max_special = max((len(t.encode("utf-8")) for t in special_tokens), default=0)
    safe_cuts = has_safe_cuts(pattern)
    buf = b""
    with _reading(path), open(path, "rb") as f:
        while data := f.read(chunk_size):
            buf += data
            while len(buf) >= chunk_size:
                cut = find_cut(buf, special, max_special, safe_cuts)
                if cut is None:
                    if len(buf) < MAX_BUFFER_CHUNKS * chunk_size:
                        break  # read more, a cut will come
                    log.warning("%s: no safe cut point in %d bytes; cutting anyway", path, len(buf))
                    cut = len(buf) - max(max_special, 1)
                    while cut > 0 and buf[cut] & 0xC0 == 0x80:  # not inside a character
                        cut -= 1
                yield buf[:cut]
                buf = buf[cut:]
    if buf:
        yield buf


@dataclass
class ChunkCounts:
    """Pre-token counts of one or more chunks, plus what the reader had to repair."""

    counts: Counter = field(default_factory=Counter)  # pre-token (str) -> occurrences
    n_bytes: int = 0
    bad_bytes: int = 0

    def add(self, other: ChunkCounts) -> None:
        self.counts.update(other.counts)
        self.n_bytes += other.n_bytes
        self.bad_bytes += other.bad_bytes


def count_chunk(
    chunk: bytes,
    special_tokens: Sequence[str],
    pattern: str,
    max_pretoken_chars: int = MAX_PRETOKEN_CHARS,
) -> ChunkCounts:
    """Count the pre-tokens of one chunk; special tokens are boundaries and not counted.
    A pre-token longer than ``max_pretoken_chars`` counts as its consecutive pieces of
    that length (the last one may be shorter), its first ``MAX_PIECES`` pieces only."""
    text, bad = decode_utf8(chunk)
    split = compile_pattern(pattern)
    special = special_token_regex(special_tokens)
    pieces = special.split(text) if special is not None else [text]
    counts: Counter = Counter()
    for piece in pieces:
        for word in split_text(split, piece):
            if len(word) <= max_pretoken_chars:
                counts[word] += 1
            else:
                n = max_pretoken_chars
                end = min(len(word), n * MAX_PIECES)
                counts.update(word[i : i + n] for i in range(0, end, n))
    return ChunkCounts(counts, len(chunk), bad)


def count_pretokens(
    files: Sequence[Path],
    special_tokens: Sequence[str],
    pattern: str,
    *,
    num_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    strict: bool = False,
    progress: bool = False,
    max_pretoken_chars: int = MAX_PRETOKEN_CHARS,
) -> ChunkCounts:
    """Count pre-tokens over all files, in ``num_workers`` processes (default: all cores).

    The result does not depend on ``num_workers`` or ``chunk_size`` (except where a
    buffer without any cut point had to be cut). With ``strict``, invalid UTF-8 raises
    DataError naming the file and byte offset; otherwise bad bytes become U+FFFD and
    their count is in ``bad_bytes``. Pre-tokens longer than ``max_pretoken_chars`` count
    in pieces (see ``count_chunk``).
    """
    check_workers(num_workers)
    if isinstance(max_pretoken_chars, bool) or not (
        isinstance(max_pretoken_chars, int) and max_pretoken_chars >= 1
    ):
        raise ConfigError(f"max_pretoken_chars must be an integer >= 1, got {max_pretoken_chars!r}")
    total_bytes = 0
    for file in files:
        with _reading(file):
            total_bytes += file.stat().st_size
    if strict:
        _check_utf8(files)
    workers = num_workers or len(os.sched_getaffinity(0))
    if total_bytes < MIN_PARALLEL_BYTES:
        workers = 1
    chunks = (c for f in files for c in iter_chunks(f, special_tokens, chunk_size, pattern))
    result = ChunkCounts()
    bar = _progress_bar(total_bytes, "pre-tokenizing", progress)
    if workers == 1:
        for chunk in chunks:
            result.add(count_chunk(chunk, special_tokens, pattern, max_pretoken_chars))
            bar.update(len(chunk))
    else:
        # At most 2 chunks per worker in flight, so memory stays bounded on any corpus.
        with ProcessPoolExecutor(workers) as pool:
            pending: set = set()
            for chunk in chunks:
                args = (chunk, special_tokens, pattern, max_pretoken_chars)
                pending.add(pool.submit(count_chunk, *args))
                if len(pending) >= 2 * workers:
                    pending = _collect(pending, result, bar)
            while pending:
                pending = _collect(pending, result, bar)
    bar.close()
    return result


def check_workers(num_workers: int | None) -> None:
    """ConfigError unless ``num_workers`` is None (every core) or an integer >= 1."""
    if num_workers is None:
        return
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(
            f"workers must be an integer >= 1 (leave it out to use every core), got {num_workers!r}"
        )


def _collect(pending: set, result: ChunkCounts, bar) -> set:
    done, pending = wait(pending, return_when=FIRST_COMPLETED)
    for fut in done:
        part = fut.result()
        result.add(part)
        bar.update(part.n_bytes)
    return pending


def _check_utf8(files: Sequence[Path]) -> None:
    """Raise DataError at the first invalid UTF-8 byte of any file (streaming)."""
    for path in files:
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0  # bytes of the file fed to the decoder so far
        with _reading(path), open(path, "rb") as f:
            while True:
                data = f.read(1 << 20)
                try:
                    decoder.decode(data, final=not data)
                except UnicodeDecodeError as e:
                    # e.object is the decoder's held-back bytes followed by ``data``.
                    start = offset + len(data) - len(e.object) + e.start
                    raise DataError(
                        f"{path}: invalid UTF-8 at byte {start}; fix the file or leave out "
                        "--strict to replace bad bytes with U+FFFD"
                    ) from None
                if not data:
                    break
                offset += len(data)


def _progress_bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, leave=False)
