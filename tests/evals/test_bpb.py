"""``scratchlm eval bpb``: bits per byte, streamed, in sliding windows."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.checkpoint import save_checkpoint
from scratchlm.cli import main
from scratchlm.errors import ConfigError
from scratchlm.evals.bpb import file_bits_per_byte, score_stream, sliding_windows
from scratchlm.evals.loglik import prefix_id, rolling_windows, score_ids

TEXT = "Once upon a time there was a little robot. Café, naïve, 日本語のテキスト 🤖\tend.\r\n"


def _direct_nats(model, ids: list[int]) -> float:
    """Sum of -log P over ids[1:], one forward pass (the text fits the context)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0]
    return float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))


@pytest.mark.parametrize("context,stride", [(8, 8), (8, 3), (8, 1), (5, 4)])
def test_sliding_windows_score_every_token_once_with_enough_context(context, stride):
    stream = list(range(100, 137))
    scored = []
    for inputs, targets, n_new in sliding_windows(iter(stream), context, stride):
        assert len(inputs) == len(targets) <= context and 1 <= n_new <= len(targets)
        assert targets == [t + 1 for t in inputs]  # shifted by one: the stream counts up
        new = targets[len(targets) - n_new :]
        if scored:  # after the first window: at least context - stride tokens before each
            assert len(targets) - n_new >= context - stride
        scored += new
    assert scored == stream[1:]
    assert list(sliding_windows([], 8, 4)) == list(sliding_windows([7], 8, 4)) == []
    with pytest.raises(ConfigError):
        list(sliding_windows(stream, 8, 9))


def test_bpb_of_a_short_text_is_the_direct_computation(tiny_model, tiny_tokenizer, tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    ids = [prefix_id(tiny_tokenizer), *tiny_tokenizer.encode(TEXT)]
    assert len(ids) <= tiny_model.config.context_length + 1  # one window
    result = file_bits_per_byte(tiny_model, tiny_tokenizer, path)
    assert result.bytes == len(TEXT.encode("utf-8"))
    assert result.tokens == len(ids) - 1
    expected = _direct_nats(tiny_model, ids) / math.log(2) / result.bytes
    assert result.bpb == pytest.approx(expected, rel=1e-5)


def test_disjoint_windows_equal_lm_eval_rolling_windows(tiny_model, tiny_tokenizer, one_thread):
    ids = tiny_tokenizer.encode(TEXT * 7 + " and the end")
    prefix, window = prefix_id(tiny_tokenizer), tiny_model.config.context_length
    assert len(ids) > 3 * window and len(ids) % window  # a last, shorter window too
    nats, count = score_stream(tiny_model, [prefix, *ids], stride=window, batch_size=3)
    rolling = score_ids(tiny_model, list(rolling_windows(ids, prefix, window)), batch_size=2)
    assert count == len(ids)
    assert nats == pytest.approx(-sum(s.logprob for s in rolling), rel=1e-5)
    # more context per token: a different (here: any) figure, every token still counted once
    nats_half, count_half = score_stream(tiny_model, [prefix, *ids], batch_size=5)
    assert count_half == len(ids) and nats_half != pytest.approx(nats)


def test_cli_prints_one_line_per_file_and_the_total(tiny_model, tiny_tokenizer, tmp_path, capsys):
    ck = save_checkpoint(tiny_model, None, 0, tmp_path / "ck", tokenizer=tiny_tokenizer)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT * 20, encoding="utf-8")
    b.write_text("short", encoding="utf-8")
    assert main(["eval", "bpb", str(ck), str(a), str(b), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert [line.split()[-1] for line in lines] == [str(a), str(b), "total"]
    assert main(["eval", "bpb", str(ck), str(a), str(b), "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    total = rows[-1]
    assert total["bytes"] == a.stat().st_size + b.stat().st_size
    assert total["tokens"] == rows[0]["tokens"] + rows[1]["tokens"]
    expected = (rows[0]["nats"] + rows[1]["nats"]) / math.log(2) / total["bytes"]
    assert total["bpb"] == pytest.approx(expected)


def test_cli_refuses_a_missing_file_in_one_line(tiny_model, tiny_tokenizer, tmp_path, capsys):
    ck = save_checkpoint(tiny_model, None, 0, tmp_path / "ck", tokenizer=tiny_tokenizer)
    assert main(["eval", "bpb", str(ck), str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.txt is not a file" in err
