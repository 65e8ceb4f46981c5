"""Readers: one input file in one format -> a stream of document pieces.

Every reader yields ``(text, end)`` pairs: pieces of text in order, ``end=True`` on the
last piece of each document. Most formats hold whole documents, so a piece is a document;
a plain text file is read in blocks, so one huge document arrives as many pieces and is
never held whole. Joining the pieces of a document gives its text exactly.

Text is decoded as UTF-8 block by block. Invalid bytes become U+FFFD and are counted in a
``ReadStats``; with ``strict`` they raise a DataError naming the file and byte offset.
A UTF-8 byte-order mark at the start of a file is dropped.
"""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from scratchlm.builtin import END_OF_TEXT
from scratchlm.errors import DataError
from scratchlm.tokenizer.pretokenize import decode_utf8

# Bytes read from a text file at a time.
BLOCK_BYTES = 1 << 20
# csv refuses fields over 128 Ki characters by default; documents are often longer.
CSV_FIELD_LIMIT = 2**31 - 1

Pieces = Iterator[tuple[str, bool]]


@dataclass
class ReadStats:
    """What the readers repaired or skipped, summed over every input read."""

    replaced_bytes: int = 0  # invalid UTF-8 bytes replaced by U+FFFD
    replaced_files: list[str] = field(default_factory=list)  # files that had any
    blank_documents: int = 0  # empty or whitespace-only documents, left out


def import_optional(module: str, what: str) -> ModuleType:
    """Import an optional dependency, or raise DataError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise DataError(
            f"reading {what} needs the {top} package: pip install 'scratchlm[data]'"
        ) from None


# ----------------------------------------------------------------------- UTF-8 text


def _incomplete_tail(data: bytes) -> int:
    """Length of a UTF-8 sequence cut off at the end of ``data`` (0 if none), so a
    block is decoded only up to a character boundary."""
    j = len(data) - 1
    while j >= max(0, len(data) - 3) and 0x80 <= data[j] < 0xC0:  # continuation bytes
        j -= 1
    if j < 0 or data[j] < 0xC0:
        return 0
    need = 2 if data[j] < 0xE0 else 3 if data[j] < 0xF0 else 4
    return len(data) - j if len(data) - j < need else 0


def read_text_blocks(path: Path, *, strict: bool, stats: ReadStats) -> Iterator[str]:
    """Decode a file as UTF-8 in blocks of about ``BLOCK_BYTES``; never holds it whole."""
    offset = 0  # file offset of the first byte not decoded yet
    bad = 0
    pending = b""
    with open(path, "rb") as f:
        while True:
            data = f.read(BLOCK_BYTES)
            buf = pending + data
            keep = _incomplete_tail(buf) if data else 0
            chunk, pending = buf[: len(buf) - keep], buf[len(buf) - keep :]
            if strict:
                try:
                    text = chunk.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}: invalid UTF-8 at byte {offset + e.start}; fix the file or "
                        "leave out --strict to replace bad bytes with U+FFFD"
                    ) from None
            else:
                text, n_bad = decode_utf8(chunk)
                bad += n_bad
            if offset == 0 and text.startswith("\ufeff"):
                text = text[1:]  # a byte-order mark is not part of the text
            offset += len(chunk)
            if text:
                yield text
            if not data:
                break
    if bad:
        _note_replaced(stats, path, bad)


def iter_lines(blocks: Iterator[str]) -> Iterator[str]:
    """The lines of a stream of text blocks, each with its ``\\n`` (the last maybe not)."""
    tail: list[str] = []
    for block in blocks:
        lines = block.split("\n")
        if len(lines) == 1:
            tail.append(block)
            continue
        tail.append(lines[0])
        yield "".join(tail) + "\n"
        for line in lines[1:-1]:
            yield line + "\n"
        tail = [lines[-1]] if lines[-1] else []
    if tail:
        yield "".join(tail)


def _note_replaced(stats: ReadStats, path: Path, count: int) -> None:
    stats.replaced_bytes += count
    if str(path) not in stats.replaced_files:
        stats.replaced_files.append(str(path))


def clean_text(text: str, path: Path, where: str, *, strict: bool, stats: ReadStats) -> str:
    """Replace lone surrogates (JSON can spell them: ``"\\ud800"``) with U+FFFD: they are
    not Unicode text and no tokenizer can encode them. Each counts as one replaced byte."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError as e:
        if strict:
            raise DataError(
                f"{where}: text holds a lone surrogate (U+{ord(text[e.start]):04X}); fix the "
                "input or leave out --strict to replace it with U+FFFD"
            ) from None
    chars = ["\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text]
    _note_replaced(stats, path, sum(a != b for a, b in zip(chars, text, strict=True)))
    return "".join(chars)


def drop_blank(pieces: Pieces, stats: ReadStats) -> Pieces:
    """Leave out documents that are empty or only whitespace, counting them. The blank
    pieces a document starts with are held back until it shows some text."""
    held: list[str] = []
    seen_text = False
    for text, end in pieces:
        if not seen_text:
            if not text or text.isspace():
                if end:
                    stats.blank_documents += 1
                    held.clear()
                else:
                    held.append(text)
                continue
            seen_text = True
            for blank in held:
                yield blank, False
            held.clear()
        yield text, end
        if end:
            seen_text = False


# ------------------------------------------------------------------------- formats


def text_pieces(path: Path, *, split_eot: bool, strict: bool, stats: ReadStats) -> Pieces:
    """A plain text file: one document, or with ``split_eot`` one document per stretch
    of text between ``<|endoftext|>`` markers (the markers themselves are dropped)."""
    blocks = read_text_blocks(path, strict=strict, stats=stats)
    if not split_eot:
        for block in blocks:
            yield block, False
        yield "", True
        return
    keep = len(END_OF_TEXT) - 1  # a marker may begin in the last characters of a block
    buf = ""
    for block in blocks:
        *docs, buf = (buf + block).split(END_OF_TEXT)
        for doc in docs:  # the first one ends the document the earlier pieces began
            yield doc, True
        if len(buf) > keep:
            yield buf[:-keep], False
            buf = buf[-keep:]
    yield buf, True


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "number")


def record_text(value: Any, text_field: str, where: str, *, allow_string: bool) -> str:
    """The document in one JSON record: a string (if allowed) or ``value[text_field]``;
    a null field is an empty document."""
    if allow_string and isinstance(value, str):
        return value
    if not isinstance(value, dict):
        shape = (
            f"a string or an object with a {text_field!r} field"
            if allow_string
            else (f"a JSON object with a {text_field!r} field")
        )
        raise DataError(f"{where}: expected {shape}, found a JSON {_json_type(value)}")
    if text_field not in value:
        fields = ", ".join(map(repr, list(value)[:10])) or "none"
        raise DataError(
            f"{where}: no {text_field!r} field (fields: {fields}); pass --text-field NAME"
        )
    text = value[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DataError(f"{where}: field {text_field!r} is a JSON {_json_type(text)}, not a string")
    return text


def jsonl_pieces(path: Path, *, text_field: str, strict: bool, stats: ReadStats) -> Pieces:
    """JSON Lines: one object per line, the document in ``text_field``; blank lines skipped."""
    blocks = read_text_blocks(path, strict=strict, stats=stats)
    for lineno, line in enumerate(iter_lines(blocks), 1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: invalid JSON ({e.msg}); each line of a .jsonl file must be one "
                "JSON object"
            ) from None
        text = record_text(value, text_field, where, allow_string=False)
        yield clean_text(text, path, where, strict=strict, stats=stats), True


def json_pieces(path: Path, *, text_field: str, strict: bool, stats: ReadStats) -> Pieces:
    """A JSON list of strings (or of objects with ``text_field``), parsed one element at a
    time so that the file is never held whole."""
    decoder = json.JSONDecoder()
    blocks = read_text_blocks(path, strict=strict, stats=stats)
    buf, pos, eof = "", 0, False

    def fill(want: int) -> None:
        """Buffer at least ``want`` characters from ``pos`` on (fewer at the end)."""
        nonlocal buf, pos, eof
        parts = [buf[pos:]]
        have = len(parts[0])
        while have < want and not eof:
            block = next(blocks, None)
            if block is None:
                eof = True
            else:
                parts.append(block)
                have += len(block)
        buf, pos = "".join(parts), 0

    def peek() -> str:
        """Skip whitespace; the next character, or "" at the end of the file."""
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or eof:
                return buf[pos : pos + 1]
            fill(1)

    if peek() != "[":
        found = "an empty file" if not buf[pos:] else f"{buf[pos]!r} first"
        raise DataError(
            f"{path}: expected a JSON list of strings (or of objects with a {text_field!r} "
            f"field), found {found}; for one JSON object per line use a .jsonl file"
        )
    pos += 1
    index = 0
    if peek() == "]":
        pos += 1
    else:
        while True:
            where = f"{path}, element {index}"
            peek()  # raw_decode does not skip leading whitespace
            want = max(len(buf) - pos, 1)
            while True:
                try:
                    value, pos = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    if eof:
                        raise DataError(f"{where}: invalid JSON ({e.msg})") from None
                    want *= 2  # the element is cut off: read on (doubling keeps it linear)
                    fill(want)
            text = record_text(value, text_field, where, allow_string=True)
            yield clean_text(text, path, where, strict=strict, stats=stats), True
            index += 1
            sep = peek()
            pos += 1
            if sep == "]":
                break
            if sep != ",":
                found = repr(sep) if sep else "the end of the file"
                raise DataError(f"{where}: expected ',' or ']' after it, found {found}")
    if peek():
        raise DataError(f"{path}: unexpected text after the JSON list; fix the file")


def csv_header(path: Path) -> list[str] | None:
    """The first row of a CSV file (None for an empty file)."""
    blocks = read_text_blocks(path, strict=False, stats=ReadStats())
    return next(csv.reader(iter_lines(blocks)), None)


def csv_column_index(header: list[str] | None, column: str, path: Path) -> int:
    if header is None:
        raise DataError(f"{path} is empty: it has no header row with a {column!r} column")
    if column not in header:
        names = ", ".join(map(repr, header[:20]))
        raise DataError(
            f"{path} has no column {column!r} (columns: {names}); pass --csv-column with one "
            "of them"
        )
    return header.index(column)


def csv_pieces(path: Path, *, csv_column: str | None, strict: bool, stats: ReadStats) -> Pieces:
    """CSV: with ``csv_column`` the first row is the header and each later row's cell in
    that column is a document; without, every row (the first too) is a document, its
    cells joined with newlines. Blank lines are skipped."""
    reader = csv.reader(iter_lines(read_text_blocks(path, strict=strict, stats=stats)))
    # csv's field limit is process-wide; raised only while this file is being read.
    old_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        column = None
        if csv_column is not None:
            column = csv_column_index(next(reader, None), csv_column, path)
        for row in reader:
            if not row:
                continue
            if column is None:
                yield "\n".join(row), True
            elif column < len(row):
                yield row[column], True
            else:
                raise DataError(
                    f"{path}, line {reader.line_num}: the row has {len(row)} cell(s) and no "
                    f"{csv_column!r} column; fix the row"
                )
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
    finally:
        csv.field_size_limit(old_limit)
