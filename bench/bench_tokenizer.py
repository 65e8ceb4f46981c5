"""Tokenizer benchmark: scratchlm beside Hugging Face `tokenizers`, `rustbpe` and `tiktoken`.

    .venv/bin/python bench/bench_tokenizer.py [--quick] [--markdown PATH] [--tables 1,2,3,4]

Prints four tables (same inputs, same run, ratios to ours) and writes them as Markdown
with ``--markdown``:

1. training time and peak memory, vocab 10,000 with ``<|endoftext|>``;
2. encoding and decoding MB/s, single thread;
3. id equality over the whole of each corpus (ours pure Python, ours tiktoken path,
   plain tiktoken, HF tokenizers);
4. memory bounds: streaming encode of a large file, training on a file with no newline.

Every contender runs in a fresh subprocess (``harness.measure``), so each peak RSS is its own; the
child times only the sections inside ``clock(...)``, never imports or reading input
unless the tool itself reads it (said in each table's notes). Nothing here asserts a
timing: the numbers are for people to read. MB = 10^6 bytes of UTF-8 text; MiB = 2^20.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    REPO,
    Clock,
    Report,
    Run,
    Table,
    common_prefix,
    cores,
    load_average,
    measure,
    package_version,
    ratio,
    scratchlm_version,
)

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
MAKE_CORPORA = REPO.parent / "shared" / "data" / "make_corpora.sh"
CORPORA = ("stdlib_py", "pydocs_en")
EOT = "<|endoftext|>"
SINGLE_THREAD = {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# --------------------------------------------------------------------------------------
# Child tasks: each runs in its own process and returns a JSON-ready dict
# --------------------------------------------------------------------------------------


def read_text(path: str) -> str:
    """The corpus as text; invalid UTF-8 bytes become U+FFFD (as our trainer does)."""
    return Path(path).read_bytes().decode("utf-8", errors="replace")


def split_docs(text: str) -> list[str]:
    """Documents between ``<|endoftext|>`` markers, for tools without special tokens."""
    return [doc for doc in text.split(EOT) if doc]


def split_keep_special(text: str) -> list[str]:
    """Ordinary pieces and ``<|endoftext|>`` markers, in order."""
    return [piece for piece in re.split(f"({re.escape(EOT)})", text) if piece]


def train_ours(clock: Clock, path: str, vocab_size: int, save_dir: str | None = None) -> dict:
    from scratchlm.tokenizer import BPETokenizer, train_bpe

    with clock("train"):  # includes reading the file: train_bpe streams it
        vocab, merges = train_bpe(path, vocab_size, [EOT])
    if save_dir:
        BPETokenizer(vocab, merges, [EOT], use_tiktoken=False).save(save_dir)
    return {"tokens": [(a + b).hex() for a, b in merges]}


def train_hf(clock: Clock, path: str, vocab_size: int) -> dict:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    docs = split_docs(read_text(path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    with clock("train"):
        tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    from scratchlm.tokenizer.gpt2 import bytes_to_unicode

    merges = json.loads(tok.to_str())["model"]["merges"]
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    tokens = []
    for merge in merges:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        tokens.append(bytes(byte_of[ch] for ch in a + b).hex())
    return {"tokens": tokens}


def train_rustbpe(clock: Clock, path: str, vocab_size: int) -> dict:
    import rustbpe

    from scratchlm.tokenizer import GPT2_PATTERN

    docs = split_docs(read_text(path))
    tok = rustbpe.Tokenizer()
    with clock("train"):  # rustbpe's vocab_size counts the 256 bytes but no special token
        tok.train_from_iterator(iter(docs), vocab_size - 1, pattern=GPT2_PATTERN)
    ranks = tok.get_mergeable_ranks()
    tokens = [t for t, rank in sorted(ranks, key=lambda x: x[1]) if rank >= 256]
    return {"tokens": [bytes(t).hex() for t in tokens]}


def _word_counts(path: str) -> dict[bytes, int]:
    """Pre-token counts exactly as our trainer sees them (setup, not timed)."""
    from scratchlm.tokenizer import GPT2_PATTERN
    from scratchlm.tokenizer.corpus import corpus_files, count_pretokens

    counted = count_pretokens(corpus_files(path), [EOT], GPT2_PATTERN)
    return {w.encode("utf-8"): c for w, c in counted.counts.items()}


def merges_reference(clock: Clock, path: str, num_merges: int) -> dict:
    from scratchlm.tokenizer import merge_pairs_reference

    word_counts = _word_counts(path)
    with clock("merges"):
        merges = merge_pairs_reference(word_counts, num_merges)
    return {"merges": [[a.hex(), b.hex()] for a, b in merges], "words": len(word_counts)}


def merges_ours(clock: Clock, path: str, num_merges: int, all_merges: int) -> dict:
    from scratchlm.tokenizer import merge_pairs

    word_counts = _word_counts(path)
    with clock("merges"):
        merges = merge_pairs(word_counts, num_merges)
    with clock("all merges"):
        merge_pairs(word_counts, all_merges)
    return {"merges": [[a.hex(), b.hex()] for a, b in merges]}


def _load_ours(tokenizer_dir: str, **kwargs):
    from scratchlm.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir, **kwargs)


def _save_ids(ids, path: str) -> None:
    import numpy as np

    np.save(path, np.asarray(ids, dtype=np.int32))


def encode_ours_python(clock: Clock, tokenizer_dir: str, path: str, ids_out: str) -> dict:
    from array import array

    text = read_text(path)
    tok = _load_ours(tokenizer_dir, use_tiktoken=False)
    with clock("cold"):  # a fresh tokenizer: the pre-token cache is empty
        ids = tok.encode(text)
    first = array("i", ids)
    del ids
    with clock("warm"):
        ids = tok.encode(text)
    assert array("i", ids) == first, "second pass gave other ids"
    with clock("decode"):
        out = tok.decode(ids)
    _save_ids(ids, ids_out)
    return {"tokens": len(ids), "bytes": len(text.encode()), "roundtrip": out == text}


def encode_ours(clock: Clock, tokenizer_dir: str, path: str, ids_out: str) -> dict:
    text = read_text(path)
    tok = _load_ours(tokenizer_dir)
    with clock("encode"):
        ids = tok.encode(text)
    with clock("decode"):
        out = tok.decode(ids)
    _save_ids(ids, ids_out)
    return {
        "tokens": len(ids),
        "bytes": len(text.encode()),
        "roundtrip": out == text,
        "uses_tiktoken": tok.uses_tiktoken,
    }


def encode_tiktoken(clock: Clock, tokenizer_dir: str, path: str, ids_out: str) -> dict:
    import tiktoken

    tok = _load_ours(tokenizer_dir, use_tiktoken=False)
    special = tok.special_tokens
    ranks = {t: i for i, t in tok.vocab.items() if i not in special.values()}
    enc = tiktoken.Encoding(
        name="bench", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=special
    )
    text = read_text(path)
    with clock("encode"):
        ids: list[int] = []
        for piece in split_keep_special(text):
            if piece in special:
                ids.append(special[piece])
            else:
                ids.extend(enc.encode_ordinary(piece))
    with clock("decode"):
        out = enc.decode(ids)
    _save_ids(ids, ids_out)
    return {"tokens": len(ids), "bytes": len(text.encode()), "roundtrip": out == text}


def encode_hf(clock: Clock, tokenizer_dir: str, path: str, ids_out: str) -> dict:
    from tokenizers import Tokenizer

    from scratchlm.tokenizer.hf import to_hf_tokenizer_json

    data = to_hf_tokenizer_json(_load_ours(tokenizer_dir, use_tiktoken=False))
    hf = Tokenizer.from_str(json.dumps(data))
    text = read_text(path)
    with clock("encode"):  # one document at a time: HF's special tokens handle the markers
        ids: list[int] = []
        for piece in split_keep_special(text):
            ids.extend(hf.encode(piece, add_special_tokens=False).ids)
    with clock("decode"):
        out = hf.decode(ids, skip_special_tokens=False)
    _save_ids(ids, ids_out)
    return {"tokens": len(ids), "bytes": len(text.encode()), "roundtrip": out == text}


def stream_encode(clock: Clock, tokenizer_dir: str, path: str) -> dict:
    tok = _load_ours(tokenizer_dir)
    n = 0
    with clock("encode"), open(path, encoding="utf-8", errors="replace") as lines:
        for _ in tok.encode_iterable(lines):
            n += 1
    return {"tokens": n, "uses_tiktoken": tok.uses_tiktoken}


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def secs(t: float) -> str:
    return f"{t:,.2f}" if t < 100 else f"{t:,.0f}"


def mib(x: float) -> str:
    return f"{x:,.0f}"


def rss_cell(run: Run) -> str:
    """Peak RSS of the process, plus that of its largest worker process if it had any."""
    workers = f" (+{mib(run.workers_rss_mib)})" if run.workers_rss_mib else ""
    return mib(run.peak_rss_mib) + workers


def cell_error(run: Run) -> str:
    return f"failed: {run.error}"


def learned_overlap(ours: list[str], theirs: list[str]) -> str:
    """How close another trainer's learned tokens are to ours: the length of the common
    prefix (same tokens in the same order) and the share of tokens both learned."""
    prefix = common_prefix(ours, theirs)
    shared = len(set(ours) & set(theirs)) / max(1, len(ours))
    return f"first {prefix} same, {shared:.0%} shared"


def table_training(paths: dict[str, Path], args, work: Path) -> tuple[Table, dict[str, Run]]:
    """Table 1a: full training, ours vs HF tokenizers vs rustbpe. Our tokenizers are
    saved in ``work`` for the next tables; our runs are returned for table 4."""
    v = args.vocab_size
    main = Table(
        f"1a. Training: vocab {v:,} with {EOT} (all cores)",
        ["corpus", "trainer", "wall s", "vs ours", "peak RSS MiB", "merges", "learned vs ours"],
        notes=[
            "vs ours = this trainer's wall time / ours (below 1: faster than ours).",
            "ours: train_bpe(path, ...): times reading + decoding the file, parallel "
            "pre-tokenization and merging; peak RSS is the main process (+ largest worker).",
            "HF tokenizers: BPE + ByteLevel pre-tokenizer, initial_alphabet=ByteLevel.alphabet(), "
            "fed by train_from_iterator with documents split on <|endoftext|> (HF cannot read "
            "invalid UTF-8 files; the text is decoded with errors='replace' as ours does). "
            "Reading and splitting are not timed.",
            f"rustbpe: train_from_iterator(iter(docs), {v - 1}, pattern=GPT-2) on the same "
            "documents (no special tokens; 256 + same number of merges). Reading not timed.",
            "learned vs ours: merged tokens in the same order as ours from the start, and "
            "the share of our tokens the trainer also learned (ties may be broken otherwise).",
        ],
    )
    ours_runs = {}
    for name, path in paths.items():
        tok_dir = work / f"tok_{name}"
        ours = measure(train_ours, path=str(path), vocab_size=v, save_dir=str(tok_dir))
        ours_runs[name] = ours
        hf = measure(train_hf, path=str(path), vocab_size=v)
        rust = measure(train_rustbpe, path=str(path), vocab_size=v)
        for label, run in [("ours (scratchlm)", ours), ("HF tokenizers", hf), ("rustbpe", rust)]:
            if run.error:
                main.rows.append([name, label, cell_error(run), "", "", "", ""])
                continue
            t = run.seconds["train"]
            overlap = "-"
            if run is not ours and not ours.error:
                overlap = learned_overlap(ours.result["tokens"], run.result["tokens"])
            vs = ratio(t / ours.seconds["train"]) if not ours.error else "-"
            main.rows.append(
                [name, label, secs(t), vs, rss_cell(run), f"{len(run.result['tokens']):,}", overlap]
            )
        if not (ours.error or hf.error):
            main.notes.append(
                f"spec (ours within 3x of HF) on {name}: ours / HF = "
                f"{ours.seconds['train'] / hf.seconds['train']:.2f}x"
            )
    return main, ours_runs


def table_merge_loop(paths: dict[str, Path], args) -> Table:
    """Table 1b: the merge loop alone on the same pre-token counts, ours (incremental)
    vs the pure-Python reference (recounts every pair per merge), which is too slow to
    run to the end: it runs ``--ref-merges`` merges and the rest is extrapolated."""
    n_merges = args.vocab_size - 256 - 1
    loop = Table(
        "1b. Merge loop only, same pre-token counts: ours (incremental) vs pure-Python "
        "reference (recounts all pairs each merge)",
        ["corpus", "merge loop", "merges", "seconds", "ref / ours", "same merges"],
        notes=[
            "Pre-token counting is setup (not timed). The EXTRAPOLATED rows are NOT "
            f"measured: reference seconds x {n_merges} / {args.ref_merges}, linear (later "
            "merges get a bit cheaper as words shrink, so this leans high).",
        ],
    )
    for name, path in paths.items():
        ref = measure(merges_reference, path=str(path), num_merges=args.ref_merges)
        fast = measure(merges_ours, path=str(path), num_merges=args.ref_merges, all_merges=n_merges)
        if ref.error or fast.error:
            loop.rows.append([name, "failed", "", "", "", cell_error(ref if ref.error else fast)])
            continue
        t_ref, t_ours = ref.seconds["merges"], fast.seconds["merges"]
        same = "yes" if ref.result["merges"] == fast.result["merges"] else "NO"
        k = f"{args.ref_merges:,}"
        loop.rows += [
            [name, "reference (pure Python)", k, secs(t_ref), ratio(t_ref / t_ours), same],
            [name, "ours (merge_pairs)", k, secs(t_ours), "1.00x", ""],
            [
                name,
                "reference, EXTRAPOLATED",
                f"{n_merges:,}",
                f"~{secs(t_ref * n_merges / args.ref_merges)}",
                ratio(t_ref * n_merges / args.ref_merges / fast.seconds["all merges"]),
                "",
            ],
            [
                name,
                "ours (merge_pairs), measured",
                f"{n_merges:,}",
                secs(fast.seconds["all merges"]),
                "1.00x",
                "",
            ],
        ]
        loop.notes.append(f"{name}: {ref.result['words']:,} distinct pre-tokens.")
    return loop


ENCODERS = [  # (label, key, child task)
    ("ours, pure Python (cold cache)", "python", encode_ours_python),
    ("ours, default (tiktoken path)", "ours", encode_ours),
    ("tiktoken.Encoding from our ranks", "tiktoken", encode_tiktoken),
    ("HF tokenizers, 1 thread", "hf", encode_hf),
]


def table_encoding(paths: dict[str, Path], args, work: Path, trained: dict) -> Table:
    """Table 2: encode and decode throughput of each encoder on each corpus; ids are
    saved for table 3."""
    table = Table(
        "2. Encoding and decoding, single thread (tokenizer trained on the same corpus)",
        [
            "corpus",
            "encoder",
            "encode MB/s",
            "vs ours default",
            "decode MB/s",
            "peak RSS MiB",
            "tokens",
            "round-trip",
        ],
        notes=[
            "MB/s over the whole corpus text (decoded with errors='replace'); reading the "
            "file and loading the tokenizer are not timed. Peak RSS includes the text, the "
            "ids list and the decoded text.",
            "Every encoder gets the whole text and must return the ids of all of it: ours "
            "tok.encode(text) (splits out <|endoftext|> itself); tiktoken and HF: re.split "
            "on <|endoftext|> (timed), then encode_ordinary / encode(piece) per piece. "
            "RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false is set for every encoder.",
            "pure Python: cold = first pass on a fresh tokenizer (empty pre-token cache), "
            "warm = second pass in the same process. decode is the same code on both paths.",
            "HF: Tokenizer.from_str of scratchlm.tokenizer.hf.to_hf_tokenizer_json(ours), "
            "built in the child before timing.",
            "vs ours default = encode MB/s / ours default's (above 1: faster than ours).",
        ],
    )
    for name, path in paths.items():
        tok_dir = work / f"tok_{name}"
        if name not in trained:  # table 1 did not run: train (and save) ours now
            trained[name] = measure(
                train_ours, path=str(path), vocab_size=args.vocab_size, save_dir=str(tok_dir)
            )
        runs = {
            key: measure(
                task,
                env=SINGLE_THREAD,
                tokenizer_dir=str(tok_dir),
                path=str(path),
                ids_out=str(work / f"ids_{name}_{key}.npy"),
            )
            for _, key, task in ENCODERS
        }
        base = runs["ours"]
        base_speed = None if base.error else base.result["bytes"] / base.seconds["encode"] / 1e6
        for label, key, _ in ENCODERS:
            run = runs[key]
            if run.error:
                table.rows.append([name, label, cell_error(run), "", "", "", "", ""])
                continue
            mb = run.result["bytes"] / 1e6
            enc_s = run.seconds["cold" if key == "python" else "encode"]
            speed = mb / enc_s
            row = [
                name,
                label,
                f"{speed:.2f}",
                ratio(speed / base_speed) if base_speed else "-",
                f"{mb / run.seconds['decode']:.1f}",
                mib(run.peak_rss_mib),
                f"{run.result['tokens']:,}",
                "yes" if run.result["roundtrip"] else "NO",
            ]
            table.rows.append(row)
            if key == "python":
                warm = mb / run.seconds["warm"]
                table.rows.append(
                    [
                        name,
                        "ours, pure Python (warm cache)",
                        f"{warm:.2f}",
                        ratio(warm / base_speed) if base_speed else "-",
                        "",
                        "(same process)",
                        "",
                        "",
                    ]
                )
        if not base.error and not base.result.get("uses_tiktoken"):
            table.notes.append(f"{name}: ours default did NOT use tiktoken (fell back).")
        if not (runs["python"].error or runs["hf"].error):
            py = runs["python"].result["bytes"] / runs["python"].seconds["cold"]
            hf = runs["hf"].result["bytes"] / runs["hf"].seconds["encode"]
            table.notes.append(
                f"spec (pure Python at least as fast as HF 1 thread) on {name}: "
                f"pure Python cold / HF = {py / hf:.2f}x"
            )
    return table


def table_equality(paths: dict[str, Path], work: Path) -> tuple[Table, list[str]]:
    """Table 3: are the ids of every encoder identical over the whole corpus?"""
    import numpy as np

    labels = {key: label for label, key, _ in ENCODERS}
    table = Table(
        "3. Equality of ids over the whole corpus (from the runs of table 2)",
        [
            "corpus",
            "ours pure Python",
            "ours tiktoken path",
            "plain tiktoken",
            "HF tokenizers",
            "identical",
            "first difference",
        ],
        notes=["Token counts; every encoder is compared with ours pure Python, id by id."],
    )
    details: list[str] = []
    for name, path in paths.items():
        ids = {}
        for _, key, _ in ENCODERS:
            file = work / f"ids_{name}_{key}.npy"
            ids[key] = np.load(file) if file.exists() else None
        ref = ids["python"]
        counts = [f"{len(a):,}" if a is not None else "missing" for a in ids.values()]
        diffs = []
        for key, other in ids.items():
            if key == "python" or other is None or ref is None:
                continue
            n = min(len(ref), len(other))
            bad = np.flatnonzero(ref[:n] != other[:n])
            pos = int(bad[0]) if len(bad) else (n if len(ref) != len(other) else None)
            if pos is not None:
                diffs.append(f"{labels[key]} at token {pos:,}")
                details.append(_describe_difference(name, path, work, ref, other, pos, labels[key]))
        complete = ref is not None and all(a is not None for a in ids.values())
        identical = "yes" if complete and not diffs else ("NO" if diffs else "incomplete")
        table.rows.append([name, *counts, identical, "; ".join(diffs) or "-"])
    return table, details


def _describe_difference(name, path, work, ref, other, pos, label) -> str:
    """Where two id sequences part: the token index, the byte offset in the text, the
    text around it and the ids (with their bytes) on both sides."""
    from scratchlm.tokenizer import load_tokenizer

    tok = load_tokenizer(work / f"tok_{name}", use_tiktoken=False)
    offset = sum(len(tok.vocab[int(i)]) for i in ref[:pos])
    data = read_text(str(path)).encode("utf-8")
    lo, hi = max(0, pos - 3), pos + 6

    def show(ids) -> str:
        return " ".join(f"{int(i)}={tok.vocab.get(int(i), b'?')!r}" for i in ids[lo:hi])

    return (
        f"{name}: {label} differs from ours pure Python at token {pos:,} "
        f"(byte {offset:,} of the replaced-UTF-8 text)\n"
        f"    text before: {data[max(0, offset - 40) : offset]!r}\n"
        f"    text after:  {data[offset : offset + 40]!r}\n"
        f"    ours pure Python [{lo}:{hi}]: {show(ref)}\n"
        f"    {label} [{lo}:{hi}]: {show(other)}"
    )


def _memory_row(label: str, f: Path, run: Run, clocked: str, peak: str, result) -> list[str]:
    """One row of table 4: input size, time and speed of the ``clocked`` part, memory."""
    mb = f.stat().st_size / 1e6
    if run.error:
        return [label, f"{mb:,.0f}", cell_error(run), "", "", "", ""]
    t = run.seconds[clocked]
    return [
        label,
        f"{mb:,.0f}",
        secs(t),
        f"{mb / t:.1f}",
        mib(run.setup_rss_mib),
        peak,
        result(run.result),
    ]


def table_memory(paths: dict[str, Path], args, work: Path, trained: dict) -> Table:
    """Table 4: memory stays flat when streaming a big file and training on one line."""
    table = Table(
        "4. Memory bounds",
        ["case", "input MB", "seconds", "MB/s", "setup RSS MiB", "peak RSS MiB", "result"],
        notes=[
            "(a) ours default encoder, encode_iterable over the file's lines (opened with "
            "errors='replace'), ids counted and dropped. setup RSS = after loading the "
            "tokenizer; peak should not grow with the file.",
            "(b) train_bpe(path, vocab, [<|endoftext|>]); *_nonl_* is the corpus with every "
            "newline replaced by a space, repeated. Peak RSS is the main process "
            "(+ largest worker). Repeats add no distinct pre-tokens, so what is shown is "
            "that a file with no newline is still chunked and streamed.",
        ],
    )
    tok_dir = work / f"tok_{CORPORA[0]}"
    if CORPORA[0] not in trained:  # tables 1 and 2 did not run: train ours now
        trained[CORPORA[0]] = measure(
            train_ours,
            path=str(paths[CORPORA[0]]),
            vocab_size=args.vocab_size,
            save_dir=str(tok_dir),
        )
    small, big = make_big_files(args.big_mb)
    runs = {
        f: measure(stream_encode, tokenizer_dir=str(tok_dir), path=str(f)) for f in (small, big)
    }
    for f, run in runs.items():
        table.rows.append(
            _memory_row(
                f"(a) encode_iterable, {f.name}",
                f,
                run,
                "encode",
                mib(run.peak_rss_mib),
                lambda r: f"{r['tokens']:,} tokens",
            )
        )
    if not any(r.error for r in runs.values()):
        n_small, n_big = runs[small].result["tokens"], runs[big].result["tokens"]
        same = "yes" if n_big == 8 * n_small else f"NO ({n_big:,} vs {8 * n_small:,})"
        table.notes.append(
            f"(a) the big file is the small one 8 times: tokens(big) == 8 x tokens(small): {same}"
        )

    original = paths[CORPORA[0]]
    nonl = make_no_newline_file(original, args.nonl_mb)
    orig_run = trained[CORPORA[0]]
    nonl_run = measure(train_ours, path=str(nonl), vocab_size=args.vocab_size)
    for f, run in [(original, orig_run), (nonl, nonl_run)]:
        table.rows.append(
            _memory_row(
                f"(b) train_bpe, {f.name}",
                f,
                run,
                "train",
                rss_cell(run),
                lambda r: f"{len(r['tokens']):,} merges",
            )
        )
    return table


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def full_corpora() -> dict[str, Path]:
    """The benchmark corpora, built by the shared script when missing."""
    if not all((DATA / f"{name}.txt").exists() for name in CORPORA):
        print(f"building the corpora: bash {MAKE_CORPORA} {DATA}", file=sys.stderr, flush=True)
        subprocess.run(["bash", str(MAKE_CORPORA), str(DATA)], check=True, cwd=REPO)
    paths = {name: DATA / f"{name}.txt" for name in CORPORA if (DATA / f"{name}.txt").exists()}
    for name in CORPORA:
        if name not in paths:
            print(f"note: {name}.txt could not be built; skipped", file=sys.stderr)
    return paths


def quick_slices(paths: dict[str, Path], mb: float, work: Path) -> dict[str, Path]:
    """The first ``mb`` MB of each corpus, cut after a <|endoftext|>."""
    out = {}
    for name, path in paths.items():
        dest = work / f"{name}.txt"
        with open(path, "rb") as f:
            head = f.read(int(mb * 1e6))
        end = head.rfind(EOT.encode())
        dest.write_bytes(head[: end + len(EOT)] if end > 0 else head)
        out[name] = dest
    return out


def make_big_files(big_mb: float) -> tuple[Path, Path]:
    """``big_<N>mb.txt`` (about N MB) = 8 copies of ``big_<N>mb_eighth.txt``, which
    repeats the corpora and ends after a <|endoftext|>, so both end at a document end."""
    small = DATA / f"big_{big_mb:g}mb_eighth.txt"
    big = DATA / f"big_{big_mb:g}mb.txt"
    if small.exists() and big.exists() and big.stat().st_size == 8 * small.stat().st_size:
        return small, big
    print(f"writing {big.name} and {small.name} ...", file=sys.stderr, flush=True)
    sources = [DATA / f"{name}.txt" for name in CORPORA if (DATA / f"{name}.txt").exists()]
    left = int(big_mb * 1e6 / 8)
    with open(small, "wb") as f:
        while left > 0:
            for source in sources:
                data = source.read_bytes()
                if len(data) > left:  # the last, partial copy ends after a document
                    data = data[: data.rfind(EOT.encode(), 0, left) + len(EOT)]
                    left = 0
                f.write(data)
                left -= len(data)
                if left <= 0:
                    break
    data = small.read_bytes()
    with open(big, "wb") as f:
        for _ in range(8):
            f.write(data)
    return small, big


def make_no_newline_file(original: Path, mb: float) -> Path:
    """``original`` with every newline replaced by a space, repeated to about ``mb`` MB."""
    dest = original.parent / f"{original.stem}_nonl_{mb:g}mb.txt"
    if not dest.exists():
        text = original.read_bytes().replace(b"\n", b" ")
        copies = max(1, round(mb * 1e6 / len(text)))
        tmp = dest.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for _ in range(copies):
                f.write(text)
        tmp.rename(dest)
    return dest


def machine_facts() -> Table:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    facts = [
        ("cores", cores()),
        ("memory", f"{mem:.0f} GiB"),
        ("load average at start", load_average()),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("scratchlm", scratchlm_version()),
        *(
            (pkg, package_version(pkg))
            for pkg in ("tokenizers", "tiktoken", "rustbpe", "regex", "numpy")
        ),
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]
    return Table("Machine", ["fact", "value"], [list(f) for f in facts])


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="small slices of the corpora and small generated files (minutes)",
    )
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    p.add_argument("--tables", default="1,2,3,4", help="which tables to run (default: all)")
    p.add_argument("--vocab-size", type=int, default=10_000)
    p.add_argument(
        "--ref-merges",
        type=int,
        help="merges for the pure-Python reference (default 300, --quick 20)",
    )
    p.add_argument(
        "--big-mb",
        type=float,
        help="size of the streaming file in table 4 (default 1000, --quick 50)",
    )
    p.add_argument(
        "--nonl-mb",
        type=float,
        help="size of the no-newline file in table 4 (default 200, --quick 20)",
    )
    p.add_argument("--quick-mb", type=float, default=3.0, help="corpus slice size in --quick")
    args = p.parse_args(argv)
    args.ref_merges = args.ref_merges or (20 if args.quick else 300)
    args.big_mb = args.big_mb or (50 if args.quick else 1000)
    args.nonl_mb = args.nonl_mb or (20 if args.quick else 200)
    which = {int(t) for t in args.tables.split(",")}

    report = Report()
    work = DATA / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    paths = full_corpora()
    if args.quick:
        paths = quick_slices(paths, args.quick_mb, work)

    report.show(machine_facts())
    report.show(
        Table(
            "Inputs",
            ["corpus", "file", "MB"],
            [
                [n, str(p.relative_to(REPO)), f"{p.stat().st_size / 1e6:.1f}"]
                for n, p in paths.items()
            ],
        )
    )

    trained: dict = {}
    details: list[str] = []
    if 1 in which:
        table, trained = table_training(paths, args, work)
        report.show(table)
        report.show(table_merge_loop(paths, args))
    if 2 in which:
        report.show(table_encoding(paths, args, work, trained))
    if 3 in which:
        eq, details = table_equality(paths, work)
        if details:
            eq.details = ["DIFFERENCES (a bug):", *details]
        report.show(eq)
    if 4 in which:
        report.show(table_memory(paths, args, work, trained))

    quick = " (--quick: small slices, not for docs)" if args.quick else ""
    report.finish(f"Tokenizer benchmark{quick}", args.markdown)


if __name__ == "__main__":
    main()
