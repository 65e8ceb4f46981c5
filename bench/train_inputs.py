"""The inputs of ``bench_train.py`` and ``bench_speedrun.py``, built once in
``bench/.data``: the tokenizer and the token files of stdlib_py, and a synthetic 1 GB token
file for the data-loading table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import BENCH, REPO

DATA = BENCH / ".data"
CORPUS = DATA / "stdlib_py.txt"
TOKENIZER = DATA / "tok10k"
PREPARED = DATA / "stdlib10k"
SYNTHETIC = DATA / "stdlib10k_synthetic_1gb"


def _scratchlm(*args: str) -> None:
    cmd = [sys.executable, "-m", "scratchlm", *args]
    print("  $ scratchlm " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def ensure_inputs() -> dict:
    """The tokenizer and the prepared token directory, built when missing; facts about
    them for table 1."""
    built = (PREPARED / "meta.json").exists() and (TOKENIZER / "tokenizer.json").exists()
    if not built and not CORPUS.exists():  # (a machine given the built ones needs no corpus)
        sys.exit(f"{CORPUS} is missing: run `bash ../shared/data/make_corpora.sh bench/.data`")
    if not (TOKENIZER / "tokenizer.json").exists():
        _scratchlm(
            "tokenizer", "train", str(CORPUS), "--vocab-size", "10000",
            "--special-token", "<|endoftext|>", "--out", str(TOKENIZER), "--quiet", "--force",
        )  # fmt: skip
    if not (PREPARED / "meta.json").exists():
        _scratchlm(
            "prepare", str(CORPUS), "--tokenizer", str(TOKENIZER), "--out", str(PREPARED),
            "--quiet", "--force",
        )  # fmt: skip
    meta = json.loads((PREPARED / "meta.json").read_text())
    return {
        "meta": meta,
        "train_mb": (PREPARED / "train.bin").stat().st_size / 1e6,
        "val_mb": (PREPARED / "val.bin").stat().st_size / 1e6,
    }


def make_synthetic(out: Path, tokens: int, vocab: int, chunk: int = 1 << 23) -> float:
    """A token directory at ``out`` that training accepts: ``tokens`` random uint16 ids
    below ``vocab`` as train.bin, written chunk by chunk (never all in memory), the real
    val.bin, tokenizer.json and meta.json with the train token count changed. Reused when
    a kept one of the same size is there; returns the seconds spent writing."""
    import numpy as np

    meta = json.loads((PREPARED / "meta.json").read_text())
    assert np.dtype(meta["dtype"]).itemsize == 2, meta["dtype"]
    train = out / "train.bin"
    if (out / "meta.json").exists() and train.exists() and train.stat().st_size == 2 * tokens:
        return 0.0
    print(f"  ... writing {2 * tokens / 1e9:.2f} GB of random token ids to {out}", file=sys.stderr)
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(train, "wb") as f:
        for first in range(0, tokens, chunk):
            n = min(chunk, tokens - first)
            ids = rng.integers(0, vocab, size=n, dtype=np.uint16)  # (n,)
            ids.astype("<u2", copy=False).tofile(f)  # the file format is little-endian
    for name in ("val.bin", "tokenizer.json"):
        shutil.copyfile(PREPARED / name, out / name)
    split = meta["splits"]["train"]
    split.update(tokens=tokens, documents=None, bytes=None, bytes_per_token=None)
    meta["synthetic"] = "train.bin: uniform random ids, written by bench/bench_train.py"
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return time.perf_counter() - start


def drop_from_page_cache(file: Path) -> None:
    """Ask the kernel to forget ``file``'s cached pages (written back first), so the next
    reader reads it from disk: posix_fadvise(DONTNEED) on this file alone."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
