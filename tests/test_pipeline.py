"""The default run: tokenizer, token files, pretraining and samples on the built-in
corpus (a reduced model here), then a rerun that reuses every stage."""

from __future__ import annotations

from scratchlm.builtin import END_OF_TEXT, builtin_corpus
from scratchlm.pipeline import PROMPTS, SAMPLE_SENTENCE, DefaultRun, run_default
from scratchlm.tokenizer import BPETokenizer, train_bpe


def test_default_run_trains_then_reuses(tmp_path):
    small = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2, "d_ff": 64}
    run = DefaultRun(
        out_dir=tmp_path / "run", model=small, context_length=32, batch_size=4, steps=6
    )
    file = tmp_path / "run" / "tokenizer" / "tokenizer.json"

    lines: list[str] = []
    checkpoint = run_default(run, progress=False, echo=lines.append)
    text = "\n".join(lines)
    assert "training" in text and "reusing" not in text
    assert file.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "data",
        "pretrain",
        "tokenizer",
    ]
    assert checkpoint.name == "step_00000006"
    for prompt in PROMPTS:  # each prompt's greedy continuation is shown
        assert any(line.strip().startswith(prompt) for line in lines)
    from scratchlm.checkpoint import load_model

    model, tok = load_model(checkpoint)
    assert model.config.d_model == 32 and model.config.vocab_size == 1024

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
    weights = (checkpoint / "model.safetensors").stat().st_mtime_ns
    again: list[str] = []
    assert run_default(run, progress=False, echo=again.append) == checkpoint
    rerun = "\n".join(again)
    assert rerun.count("reusing") == 2
    assert "training byte-level" not in rerun and "pretraining a small" not in rerun
    assert file.read_bytes() == saved and file.stat().st_mtime_ns == mtime
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == weights
    tok2 = BPETokenizer.load(file)
    assert tok2.merges == tok.merges and tok2.vocab == tok.vocab
    assert tok2.special_tokens == tok.special_tokens
