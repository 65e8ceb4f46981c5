"""Inputs: which files a list of paths and names stands for, in which format, and the
checks that run on all of them before any document is read.

An input is a file, a directory, or a built-in name:

- ``.json`` a list of strings (or of objects with the text field), ``.jsonl`` one object
  per line with the text field, ``.csv`` (one column, or whole rows), ``.parquet`` (the
  text field's column); any other file is plain text: one document, or, when it holds the
  marker ``<|endoftext|>``, one document per stretch between markers.
- A directory written by ``datasets.Dataset.save_to_disk`` (it holds ``dataset_info.json``
  or ``state.json``) is a Hugging Face dataset; any other directory stands for every file
  under it, recursively, sorted by path, hidden files and folders left out, each read by
  its own extension (plain text files whose first 8 KiB hold a NUL byte are skipped as
  binary).
- ``builtin:science``: the package's small corpus (documents split at the marker).
- ``builtin:python``: every ``.py`` file of the running interpreter's standard library
  (site-packages left out), sorted, each file one document.

Documents are streamed in pieces (see ``readers``); empty and whitespace-only documents
are left out and counted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from scratchlm.builtin import builtin_files
from scratchlm.data import columnar, readers
from scratchlm.data.readers import Pieces, ReadStats
from scratchlm.errors import DataError

log = logging.getLogger(__name__)

FORMAT_OF_SUFFIX = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
HF_MARKERS = ("dataset_info.json", "state.json")


@dataclass(frozen=True)
class Source:
    """One input to read: a file (or a Hugging Face dataset folder) and its format.

    ``format`` is one of "text", "json", "jsonl", "csv", "parquet", "hf"; ``split_eot``
    (text only) cuts the file into documents at ``<|endoftext|>``.
    """

    path: Path
    format: str
    split_eot: bool = True

    def files(self) -> list[Path]:
        """The files holding this input's data (every file of a dataset folder)."""
        if self.format != "hf":
            return [self.path]
        return [p for p in sorted(self.path.rglob("*")) if p.is_file() and not _hidden(p)]


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _is_hf_dataset(directory: Path) -> bool:
    return any((directory / name).is_file() for name in HF_MARKERS)


def _looks_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"\x00" in f.read(8192)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check its permissions") from None


def _file_source(path: Path) -> Source:
    return Source(path, FORMAT_OF_SUFFIX.get(path.suffix.lower(), "text"))


def _walk(directory: Path, exclude: Path | None) -> Iterator[Source]:
    """Every source under ``directory``, sorted by path (a folder's contents before the
    next name), hidden entries and ``exclude`` left out, dataset folders taken whole."""
    for entry in sorted(directory.iterdir()):
        if _hidden(entry) or (exclude is not None and entry.resolve() == exclude):
            continue
        if entry.is_dir() and _is_hf_dataset(entry):
            yield Source(entry, "hf")
        elif entry.is_dir():
            yield from _walk(entry, exclude)
        elif entry.is_file():
            yield _file_source(entry)


def _expand(item: str | os.PathLike, exclude: Path | None) -> list[Source]:
    name = os.fspath(item)
    if name.startswith("builtin:") and not Path(name).exists():
        # Python files are whole documents: an <|endoftext|> in one is just text.
        split = name != "builtin:python"
        return [Source(p, "text", split_eot=split) for p in builtin_files(name)]
    path = Path(name)
    if path.is_file():
        return [_file_source(path)]
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            raise DataError(
                f"{path} holds a Hugging Face DatasetDict: point at one split's folder, "
                f"e.g. {path / 'train'}"
            )
        if _is_hf_dataset(path):
            return [Source(path, "hf")]
        found = []
        for source in _walk(path, exclude):
            if source.format == "text" and _looks_binary(source.path):
                log.info(
                    "skipping %s: it looks binary (a NUL byte in its first 8 KiB)", source.path
                )
                continue
            found.append(source)
        if not found:
            raise DataError(f"directory {path} holds no input files: point at a text corpus")
        return found
    if path.exists():
        raise DataError(f"input {path} is neither a file nor a directory")
    raise DataError(f"input {path} does not exist: check the spelling")


def _check_readable(path: Path) -> None:
    """Raise a DataError naming the file if it cannot be opened and read."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check its permissions") from None


def check_source(
    source: Source, *, text_field: str = "text", csv_column: str | None = None
) -> None:
    """Cheap checks on one source before anything is encoded: it can be read and its
    first record has the expected shape. Raises DataError naming the file."""
    for path in source.files():
        _check_readable(path)
    path, fmt = source.path, source.format
    if fmt == "text" and _looks_binary(path):
        raise DataError(f"{path} looks binary (a NUL byte in its first 8 KiB): name text files")
    if fmt in ("json", "jsonl"):
        reader = readers.json_pieces if fmt == "json" else readers.jsonl_pieces
        pieces = reader(path, text_field=text_field, strict=False, stats=ReadStats())
        next(pieces, None)  # parses up to the first document: shape errors surface here
        pieces.close()
    elif fmt == "csv" and csv_column is not None:
        readers.csv_column_index(readers.csv_header(path), csv_column, path)
    elif fmt == "parquet":
        columnar.parquet_text_column(path, text_field)
    elif fmt == "hf":
        columnar.load_hf_dataset(path, text_field)


def resolve_inputs(
    inputs: Sequence[str | os.PathLike],
    *,
    text_field: str = "text",
    csv_column: str | None = None,
    exclude: str | os.PathLike | None = None,
) -> list[Source]:
    """Expand files, directories and built-in names into sources, in order, and check each
    one (exists, readable, first record well-formed) before any is read in full. A
    directory walk skips ``exclude`` (``prepare``'s output directory)."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if not inputs:
        raise DataError("no inputs given: name text files, directories or builtin:science")
    skip = None if exclude is None else Path(exclude).resolve()
    sources = [source for item in inputs for source in _expand(item, skip)]
    for source in sources:
        check_source(source, text_field=text_field, csv_column=csv_column)
    return sources


def read_pieces(
    sources: Iterable[Source],
    *,
    text_field: str = "text",
    csv_column: str | None = None,
    strict: bool = False,
    stats: ReadStats | None = None,
) -> Pieces:
    """Every document of every source, in order, as ``(text, end)`` pieces (see
    ``readers``); blank documents are left out and counted in ``stats``."""
    stats = ReadStats() if stats is None else stats
    return readers.drop_blank(
        (
            piece
            for source in sources
            for piece in _source_pieces(source, text_field, csv_column, strict, stats)
        ),
        stats,
    )


def _source_pieces(
    source: Source, text_field: str, csv_column: str | None, strict: bool, stats: ReadStats
) -> Pieces:
    path, fmt = source.path, source.format
    if fmt == "text":
        return readers.text_pieces(path, split_eot=source.split_eot, strict=strict, stats=stats)
    if fmt == "json":
        return readers.json_pieces(path, text_field=text_field, strict=strict, stats=stats)
    if fmt == "jsonl":
        return readers.jsonl_pieces(path, text_field=text_field, strict=strict, stats=stats)
    if fmt == "csv":
        return readers.csv_pieces(path, csv_column=csv_column, strict=strict, stats=stats)
    if fmt == "parquet":
        return columnar.parquet_pieces(path, text_field=text_field)
    assert fmt == "hf", fmt
    return columnar.hf_pieces(path, text_field=text_field)


def iter_documents(
    inputs: Sequence[str | os.PathLike] | Sequence[Source],
    *,
    text_field: str = "text",
    csv_column: str | None = None,
    strict: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[str]:
    """Every document of the inputs as one string each (a convenience for corpora whose
    documents fit in memory; ``read_pieces`` streams huge ones)."""
    sources = (
        list(inputs)
        if inputs and all(isinstance(s, Source) for s in inputs)
        else resolve_inputs(inputs, text_field=text_field, csv_column=csv_column)
    )
    parts: list[str] = []
    for text, end in read_pieces(
        sources, text_field=text_field, csv_column=csv_column, strict=strict, stats=stats
    ):
        parts.append(text)
        if end:
            yield "".join(parts)
            parts = []


def file_digest(path: Path) -> dict[str, object]:
    """``{"path", "size", "sha256"}`` of one file, read in blocks."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"path": str(path), "size": path.stat().st_size, "sha256": digest}
