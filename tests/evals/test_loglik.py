"""Log-likelihood scoring: batching, long continuations, rolling windows, registration."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from scratchlm.evals.loglik import encode_pair, prefix_id, rolling_windows, score_ids


def _reference(model, context: list[int], continuation: list[int]) -> float:
    """log P(continuation | context) in one unbatched pass (everything fits the window)."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids[:, :-1])[0].float(), dim=-1)
    positions = range(len(context) - 1, len(context) + len(continuation) - 1)
    return sum(float(logprobs[p, t]) for p, t in zip(positions, continuation, strict=True))


def test_batched_scores_equal_one_at_a_time(tiny_model, tiny_tokenizer, one_thread):
    texts = ["Once upon a", "Question: What did the robot", "Café", "x", "日本語の"]
    pairs = [(tiny_tokenizer.encode(t), tiny_tokenizer.encode(" stars and more")) for t in texts]
    batched = score_ids(tiny_model, pairs, batch_size=3)
    for (ctx, cont), s in zip(pairs, batched, strict=True):
        assert s.logprob == pytest.approx(_reference(tiny_model, ctx, cont), abs=1e-4)


def test_a_continuation_longer_than_the_window_is_scored_by_the_chain_rule(
    tiny_model, tiny_tokenizer, one_thread
):
    window = tiny_model.config.context_length
    context = tiny_tokenizer.encode("Once")
    continuation = tiny_tokenizer.encode(" upon a time there was a little robot." * 8)
    assert len(continuation) > window
    (whole,) = score_ids(tiny_model, [(context, continuation)])
    # the same pieces scored as separate requests add up to the whole
    first, rest = continuation[:window], continuation[window:]
    parts = score_ids(tiny_model, [(context, first), (context + first, rest)])
    assert whole.logprob == pytest.approx(sum(p.logprob for p in parts), abs=1e-4)
    assert whole.is_greedy == all(p.is_greedy for p in parts)


def test_rolling_windows_cover_every_token_once_within_the_window():
    ids = list(range(10, 33))
    stream = [0, *ids]  # the prefix, then the text
    windows = list(rolling_windows(ids, prefix=0, length=5))
    assert windows[0] == ([0], ids[:5])
    assert [t for _, cont in windows for t in cont] == ids
    done = 0
    for ctx, cont in windows:
        done += len(cont)
        end = done + 1  # stream position after this window's last token
        assert ctx + cont == stream[end - len(ctx) - len(cont) : end]  # contiguous
        assert len(ctx) + len(cont) - 1 <= 5  # the model's input fits the window


def test_whitespace_only_or_empty_context_is_the_separator(tiny_tokenizer):
    eot = prefix_id(tiny_tokenizer)
    assert encode_pair(tiny_tokenizer, "", "robot") == ([eot], tiny_tokenizer.encode("robot"))
    assert encode_pair(tiny_tokenizer, "  ", "robot") == ([eot], tiny_tokenizer.encode("  robot"))


def test_importing_scratchlm_evals_leaves_lm_eval_alone():
    """The lm-eval model registers only when its module is imported, never as a side
    effect of scratchlm itself."""
    code = "import sys, scratchlm.evals; sys.exit('lm_eval' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
