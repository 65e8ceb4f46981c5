"""The default run: the whole path from the built-in text to a trained model, one stage
after another, each saved under ``runs/default`` so that a rerun reuses finished stages.

Stages so far: the tokenizer. Pretraining, instruction tuning and chat join as they are
built; the command that runs this (``scratchlm train`` with no arguments) stays the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scratchlm.builtin import END_OF_TEXT, builtin_corpus
from scratchlm.tokenizer import BPETokenizer, train_bpe
from scratchlm.tokenizer.files import FILENAME, write_tokenizer_dir
from scratchlm.tokenizer.report import compression, longest_tokens, show_split

SAMPLE_SENTENCE = (
    "Water boils at 100 degrees Celsius, and the sky looks blue because air scatters light."
)


@dataclass
class DefaultRun:
    """Settings of the default run."""

    out_dir: Path = Path("runs/default")
    vocab_size: int = 1024


def run_default(
    run: DefaultRun, *, progress: bool = True, echo: Callable[[str], None] = print
) -> BPETokenizer:
    """Run (or reuse) every stage of the default pipeline; returns the tokenizer."""
    corpus = builtin_corpus()
    tok_dir = run.out_dir / "tokenizer"
    if (tok_dir / FILENAME).exists():
        tok = BPETokenizer.load(tok_dir)
        echo(f"[1/1] tokenizer: reusing {tok_dir} (delete it to train again)")
    else:
        echo(f"[1/1] tokenizer: training byte-level BPE on {corpus.name} ...")
        start = time.perf_counter()
        vocab, merges = train_bpe(corpus, run.vocab_size, [END_OF_TEXT], progress=progress)
        tok = BPETokenizer(
            vocab,
            merges,
            [END_OF_TEXT],
            metadata={"trained_on": [corpus.name], "vocab_size": run.vocab_size},
        )
        write_tokenizer_dir(tok, tok_dir)
        echo(f"      trained in {time.perf_counter() - start:.1f}s, saved to {tok_dir / FILENAME}")
    stats = compression(tok, corpus)
    n_merges = len(tok.merges)
    echo(f"      vocabulary: {tok.vocab_size} tokens ({n_merges} merges + 256 bytes + specials)")
    echo(f"      compression on the corpus: {stats['bytes_per_token']:.2f} bytes per token")
    longest = ", ".join(repr(t.decode("utf-8", errors="replace")) for t in longest_tokens(tok, 8))
    echo(f"      longest tokens: {longest}")
    first = ", ".join(repr((a + b).decode(errors="replace")) for a, b in tok.merges[:8])
    echo(f"      first merges: {first}")
    echo(f"      a sentence as tokens: {show_split(tok, SAMPLE_SENTENCE)}")
    return tok
