"""The measurements and inputs of ``bench_tokenizer.py``: the tasks each run in a fresh
process (``harness.measure``) and return a JSON-ready dict; the inputs (corpora, the large
streamed files) are built once in ``bench/.data``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, Clock, Table, cores, load_average, package_version, scratchlm_version

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
MAKE_CORPORA = REPO.parent / "shared" / "data" / "make_corpora.sh"
CORPORA = ("stdlib_py", "pydocs_en")
EOT = "<|endoftext|>"
SINGLE_THREAD = {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


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
    from scratchlm.tokenizer import BPETokenizer, save_tokenizer, train_bpe

    with clock("train"):  # includes reading the file: train_bpe streams it
        vocab, merges = train_bpe(path, vocab_size, [EOT])
    if save_dir:
        save_tokenizer(BPETokenizer(vocab, merges, [EOT], use_tiktoken=False), save_dir)
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
