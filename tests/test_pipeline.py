"""The default run: trains and saves a tokenizer on the built-in corpus, then reuses it."""

from __future__ import annotations

from scratchlm.builtin import END_OF_TEXT, builtin_corpus
from scratchlm.pipeline import SAMPLE_SENTENCE, DefaultRun, run_default
from scratchlm.tokenizer import BPETokenizer, train_bpe


def test_default_run_trains_then_reuses(tmp_path):
    run = DefaultRun(out_dir=tmp_path / "run")
    file = tmp_path / "run" / "tokenizer" / "tokenizer.json"

    lines: list[str] = []
    tok = run_default(run, progress=False, echo=lines.append)
    text = "\n".join(lines)
    assert "training" in text and "reusing" not in text
    assert file.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    # What was saved is what train_bpe gives on the built-in corpus.
    vocab, merges = train_bpe(builtin_corpus(), 1024, [END_OF_TEXT])
    assert tok.merges == merges and tok.vocab == vocab
    assert len(tok.vocab) == 1024 and tok.special_tokens == {END_OF_TEXT: 1023}
    assert BPETokenizer.load(file).merges == merges
    assert tok.decode(tok.encode(SAMPLE_SENTENCE)) == SAMPLE_SENTENCE
    # The sentence is echoed split into its tokens.
    split = "|".join(tok.decode([i]) for i in tok.encode(SAMPLE_SENTENCE))
    assert any(line.endswith(split) for line in lines)

    saved = file.read_bytes()
    mtime = file.stat().st_mtime_ns
    again: list[str] = []
    tok2 = run_default(run, progress=False, echo=again.append)
    assert "reusing" in "\n".join(again) and "training" not in "\n".join(again)
    assert file.read_bytes() == saved and file.stat().st_mtime_ns == mtime
    assert tok2.merges == tok.merges and tok2.vocab == tok.vocab
    assert tok2.special_tokens == tok.special_tokens
