"""``prepare``: a corpus in any supported format -> ``train.bin``, ``val.bin``, ``meta.json``.

Two passes over the inputs. The first reads every document once: it checks every record
(so bad input fails before any encoding work), counts UTF-8 repairs, and decides the
train/validation split (``split.py``). The second encodes: the main process reads the
documents again, cuts very long ones into pieces at points where cutting cannot change
the ids (``pretokenize.find_cut``), groups pieces into batches, and worker processes
encode the batches; results come back in order, at most two batches per worker in flight,
so memory stays bounded on a corpus of any size. Each document is followed by the
end-of-text id. Everything is written to a temporary folder renamed into place.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scratchlm.atomic import remove_stale_temporaries, write_dir_atomically
from scratchlm.builtin import END_OF_TEXT
from scratchlm.data.readers import Pieces, ReadStats
from scratchlm.data.sources import file_digest, read_pieces, resolve_inputs
from scratchlm.data.split import SPLIT_RULE, SplitPlan, plan_split
from scratchlm.data.tokens import (
    FORMAT,
    META_FILE,
    SPLITS,
    VERSION,
    check_split_size,
    data_fingerprint,
    read_meta,
    token_dtype,
    tokenizer_fingerprint,
)
from scratchlm.errors import ConfigError, DataError, OutputExistsError, ScratchLMError
from scratchlm.tokenizer import Tokenizer, load_tokenizer, save_tokenizer
from scratchlm.tokenizer.pretokenize import find_cut, has_safe_cuts, special_token_regex

log = logging.getLogger(__name__)

# A document longer than this many characters is encoded in pieces of about this size.
PIECE_CHARS = 1 << 20
# Characters of text per batch handed to a worker.
BATCH_CHARS = 1 << 20
# Below this many characters of text, worker processes cost more than they save.
MIN_PARALLEL_CHARS = 2 * 1024 * 1024

Work = list[tuple[str, bool, bool]]  # (text, is_val, ends_document) pieces

TOKENIZER_FILE = "tokenizer.json"


def prepare(
    inputs: Sequence[str | os.PathLike],
    tokenizer: Tokenizer | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.01,
    val_docs: int | None = None,
    text_field: str = "text",
    csv_column: str | None = None,
    strict: bool = False,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode ``inputs`` with ``tokenizer`` (an object, or the path of one) into ``out_dir``;
    returns the meta (also written as ``out_dir/meta.json``).

    The split is by document (see ``split.py``): ``val_fraction`` in (0, 1) sends each
    document to validation by its content hash; ``val_docs=N``, when given, replaces it and
    takes the N documents with the smallest hashes. Both splits must end up non-empty.
    ``strict`` refuses invalid UTF-8 instead of replacing it. ``workers``: encoding
    processes (default: all cores, or 1 for a small corpus). An existing ``out_dir`` made
    from the same input files, tokenizer and settings is kept as is ("up to date"); a
    different one is refused unless ``force``, which always rebuilds.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    settings = _settings(val_fraction, val_docs, text_field, csv_column, workers)
    tok = _load_tokenizer(tokenizer)
    eot = _end_of_text_id(tok)
    out = Path(out_dir)
    # A directory walk skips the output directory: a rerun must not read its own output.
    sources = resolve_inputs(inputs, text_field=text_field, csv_column=csv_column, exclude=out)
    files = [f for s in sources for f in s.files()]
    fingerprint = tokenizer_fingerprint(tok)

    if out.exists() and not force:
        meta = _up_to_date(out, files, fingerprint, settings)
        if meta is not None and strict and meta.get("replaced_utf8", {}).get("bytes"):
            # Made from input with invalid UTF-8, which --strict refuses: say where it is.
            for _ in read_pieces(
                sources, text_field=text_field, csv_column=csv_column, strict=True
            ):
                pass
        if meta is not None:
            log.info("%s is up to date (same inputs, tokenizer and settings): nothing to do", out)
            remove_stale_temporaries(out)  # left by a killed `prepare --force`
            return meta
        raise OutputExistsError(
            f"{out} exists and was not made from these inputs, tokenizer and settings: "
            "choose another output directory or pass --force to replace it"
        )

    digests = [file_digest(f) for f in files]
    read_kw = {"text_field": text_field, "csv_column": csv_column, "strict": strict}
    stats = ReadStats()
    plan = plan_split(
        read_pieces(sources, stats=stats, **read_kw),
        val_fraction=val_fraction,
        val_docs=val_docs,
        progress=progress,
    )
    _check_plan(plan, val_fraction, val_docs)
    if stats.replaced_bytes:
        log.warning(
            "replaced %d invalid UTF-8 byte(s) in %d file(s) with U+FFFD (first: %s); "
            "pass --strict to refuse such input",
            stats.replaced_bytes,
            len(stats.replaced_files),
            stats.replaced_files[0],
        )
    n_workers = workers or (1 if plan.chars < MIN_PARALLEL_CHARS else len(os.sched_getaffinity(0)))
    dtype = token_dtype(tok.vocab_size)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer_fingerprint": fingerprint,
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "end_of_text_id": eot,
        "splits": {},
        "settings": settings,
        "split_rule": SPLIT_RULE,
        "inputs": [os.fspath(i) for i in inputs],
        "sources": digests,
        "replaced_utf8": {"files": len(stats.replaced_files), "bytes": stats.replaced_bytes},
        "blank_documents_skipped": stats.blank_documents,
    }

    def fill(tmp: Path) -> None:
        work = _work_pieces(read_pieces(sources, stats=ReadStats(), **read_kw), plan, tok)
        tokens, docs = _encode_to(tmp, _batches(work), tok, eot, dtype, n_workers, plan, progress)
        if docs != plan.documents:
            raise DataError(
                f"the inputs changed while being prepared ({plan.documents} documents, then "
                f"{docs}): run prepare again once they are complete"
            )
        for split in SPLITS:
            meta["splits"][split] = {
                "file": f"{split}.bin",
                "tokens": tokens[split],
                "documents": docs[split],
                "bytes": plan.bytes[split],
                "bytes_per_token": plan.bytes[split] / tokens[split],
            }
        # A copy of the tokenizer makes the directory self-contained: training needs
        # only --data, and the ids can always be decoded.
        save_tokenizer(tok, tmp / TOKENIZER_FILE)
        meta["tokenizer"] = TOKENIZER_FILE
        meta["fingerprint"] = data_fingerprint(meta)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")

    write_dir_atomically(out, fill, force=force)
    return meta


def _settings(
    val_fraction: float,
    val_docs: int | None,
    text_field: str,
    csv_column: str | None,
    workers: int | None,
) -> dict[str, Any]:
    """Check the options; return those that change the output (recorded in meta)."""
    if val_docs is not None:
        if isinstance(val_docs, bool) or not isinstance(val_docs, int) or val_docs < 1:
            raise ConfigError(f"val_docs must be a whole number >= 1, got {val_docs!r}")
    elif not 0 < val_fraction < 1:
        raise ConfigError(
            f"val_fraction must be between 0 and 1 (both excluded), got {val_fraction}; "
            "for a fixed number of validation documents use --val-docs N"
        )
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if not text_field:
        raise ConfigError("text_field must name a field, got an empty string")
    return {
        "val_fraction": None if val_docs is not None else val_fraction,
        "val_docs": val_docs,
        "text_field": text_field,
        "csv_column": csv_column,
    }


def _load_tokenizer(tokenizer: Tokenizer | str | os.PathLike) -> Tokenizer:
    if isinstance(tokenizer, str | os.PathLike):
        return load_tokenizer(tokenizer)
    return tokenizer


def _end_of_text_id(tok: Tokenizer) -> int:
    eot = tok.special_tokens.get(END_OF_TEXT)
    if eot is None:
        raise DataError(
            f"the tokenizer has no {END_OF_TEXT!r} special token to end documents with: "
            f"train it with --special-token '{END_OF_TEXT}'"
        )
    return eot


def _up_to_date(
    out: Path, files: list[Path], fingerprint: str, settings: dict[str, Any]
) -> dict[str, Any] | None:
    """The meta of ``out`` if it was made from exactly these files, tokenizer and
    settings and its token files are intact; else None."""
    try:
        meta = read_meta(out)
        for split in SPLITS:
            check_split_size(out, meta, split)
        recorded = [(s["size"], s["sha256"]) for s in meta["sources"]]
    except (ScratchLMError, KeyError, TypeError):
        return None
    if meta["tokenizer_fingerprint"] != fingerprint or meta.get("settings") != settings:
        return None
    if [size for size, _ in recorded] != [f.stat().st_size for f in files]:
        return None  # cheap: no hashing when a size differs
    digests = [file_digest(f) for f in files]
    return meta if recorded == [(d["size"], d["sha256"]) for d in digests] else None


def _check_plan(plan: SplitPlan, val_fraction: float, val_docs: int | None) -> None:
    total = plan.documents["train"] + plan.documents["val"]
    rule = f"--val-docs {val_docs}" if val_docs is not None else f"--val-fraction {val_fraction}"
    if total == 0:
        raise DataError("the inputs hold no documents (all are empty): nothing to prepare")
    if plan.documents["val"] == 0:
        raise DataError(
            f"the validation split is empty ({total} document(s), {rule}): add documents, "
            "raise --val-fraction or use --val-docs N"
        )
    if plan.documents["train"] == 0:
        raise DataError(
            f"the training split is empty: all {total} document(s) went to validation "
            f"({rule}); add documents or lower --val-fraction / --val-docs"
        )


def _work_pieces(
    pieces: Pieces, plan: SplitPlan, tok: Tokenizer
) -> Iterator[tuple[str, bool, bool]]:
    """``(text, is_val, ends_document)`` pieces to encode. A long document is cut only
    where both parts encode exactly like the whole: after a special token, or at a safe
    cut of the split pattern (none for a character tokenizer: it keeps long documents
    whole)."""
    special = special_token_regex(tok.special_tokens)
    max_special = max((len(t) for t in tok.special_tokens), default=0)
    safe_cuts = has_safe_cuts(getattr(tok, "pattern", ""))
    val_positions = iter(plan.val_positions)
    next_val = next(val_positions, -1)
    position = 0
    buf = ""
    next_try = PIECE_CHARS
    for text, end in pieces:
        buf += text
        is_val = position == next_val
        if not end:
            if len(buf) >= next_try:
                cut = find_cut(buf, special, max_special, safe_cuts)
                if cut:
                    yield buf[:cut], is_val, False
                    buf = buf[cut:]
                # No cut point yet: the text must stay whole; look again once it has grown.
                next_try = max(PIECE_CHARS, len(buf) + PIECE_CHARS // 2)
            continue
        yield buf, is_val, True
        buf, next_try = "", PIECE_CHARS
        if is_val:
            next_val = next(val_positions, -1)
        position += 1


def _batches(work: Iterator[tuple[str, bool, bool]]) -> Iterator[Work]:
    batch: Work = []
    size = 0
    for item in work:
        batch.append(item)
        size += len(item[0])
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encode_batch(tok: Tokenizer, eot: int, dtype: np.dtype, batch: Work) -> dict[str, Any]:
    """Encode one batch of pieces: per split, the ids (end-of-text after each document's
    last piece), the number of documents ended, and the characters read."""
    ids: dict[bool, list[int]] = {False: [], True: []}
    docs = {False: 0, True: 0}
    for text, is_val, end in batch:
        ids[is_val].extend(tok.encode(text))
        if end:
            ids[is_val].append(eot)
            docs[is_val] += 1
    return {
        "train": np.array(ids[False], dtype=dtype),
        "val": np.array(ids[True], dtype=dtype),
        "docs": {"train": docs[False], "val": docs[True]},
        "chars": sum(len(text) for text, _, _ in batch),
    }


# Set by the pool initializer, and only inside worker processes: the tokenizer travels to
# each worker once instead of with every batch.
_worker_args: dict[str, Any] = {}


def _init_worker(tok: Tokenizer, eot: int, dtype: np.dtype) -> None:
    _worker_args.update(tok=tok, eot=eot, dtype=dtype)


def _worker_encode(batch: Work) -> dict[str, Any]:
    return encode_batch(_worker_args["tok"], _worker_args["eot"], _worker_args["dtype"], batch)


def _encoded(
    batches: Iterator[Work], tok: Tokenizer, eot: int, dtype: np.dtype, workers: int
) -> Iterator[dict[str, Any]]:
    """Encoded batches in input order; with several workers, at most two per worker in
    flight (``Pool.imap`` would read the whole input ahead)."""
    if workers == 1:
        for batch in batches:
            yield encode_batch(tok, eot, dtype, batch)
        return
    with multiprocessing.Pool(
        workers, initializer=_init_worker, initargs=(tok, eot, dtype)
    ) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_worker_encode, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _encode_to(
    folder: Path,
    batches: Iterator[Work],
    tok: Tokenizer,
    eot: int,
    dtype: np.dtype,
    workers: int,
    plan: SplitPlan,
    progress: bool,
) -> tuple[dict[str, int], dict[str, int]]:
    """Stream encoded batches into ``folder/{train,val}.bin``; tokens and documents per split."""
    tokens = dict.fromkeys(SPLITS, 0)
    docs = dict.fromkeys(SPLITS, 0)
    bar = tqdm(
        total=plan.chars,
        desc="encoding",
        unit="char",
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    with open(folder / "train.bin", "wb") as train, open(folder / "val.bin", "wb") as val:
        files = {"train": train, "val": val}
        for result in _encoded(batches, tok, eot, dtype, workers):
            for split in SPLITS:
                files[split].write(result[split].tobytes())
                tokens[split] += len(result[split])
                docs[split] += result["docs"][split]
            bar.update(result["chars"])
    bar.close()
    return tokens, docs
