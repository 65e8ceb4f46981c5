"""The tables of ``bench_tokenizer.py``: each runs its tasks (``tokenizer_tasks``) in fresh
processes and turns what they report into a Table, with ratios to ours beside the
measured values.
"""

from __future__ import annotations

from pathlib import Path

from harness import Run, Table, common_prefix, measure, ratio
from tokenizer_tasks import (
    CORPORA,
    EOT,
    SINGLE_THREAD,
    encode_hf,
    encode_ours,
    encode_ours_python,
    encode_tiktoken,
    make_big_files,
    make_no_newline_file,
    merges_ours,
    merges_reference,
    read_text,
    stream_encode,
    train_hf,
    train_ours,
    train_rustbpe,
)


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
