"""Our lm-eval model against lm-eval's own ``hf`` model on the same weights.

The tiny model is exported with ``to_hf`` (what ``scratchlm export hf`` writes) and
loaded by lm-eval's ``HFLM``; both answer the same requests: per-request log-likelihoods
within 1e-4, the same is_greedy, the same rolling log-likelihoods, and the same
accuracies on a small multiple-choice task run through ``lm_eval.simple_evaluate``.
"""

from __future__ import annotations

import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="needs the eval extra (pip install -e .[eval])")
pytest.importorskip("transformers", reason="needs the hf extra")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from scratchlm.checkpoint import save_checkpoint  # noqa: E402
from scratchlm.evals.lm_eval_model import ScratchLMEval  # noqa: E402
from scratchlm.evals.loglik import encode_pair  # noqa: E402
from scratchlm.export import to_hf  # noqa: E402

TOL = 1e-4
LONG = "Once upon a time there was a little robot who liked to count the stars. " * 4


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def models(tiny_model, tiny_tokenizer, tmp_path_factory):
    folder = to_hf(tiny_model, tiny_tokenizer, tmp_path_factory.mktemp("hf") / "export")
    hf = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=4)
    ours = ScratchLMEval(tiny_model, tiny_tokenizer, batch_size=3, show_progress=False)
    return ours, hf


def _greedy_pairs(model, tokenizer) -> list[tuple[str, str]]:
    """Requests whose continuation is the model's own greedy next token (those whose
    text tokenizes back to that token at the join)."""
    pairs = []
    for context in ["Once upon a time there", "Question:", "the stars", "Café", "robot who"]:
        ids = tokenizer.encode(context)
        with torch.no_grad():
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
        pair = (context, tokenizer.decode([token]))
        if encode_pair(tokenizer, *pair)[1] == [token]:
            pairs.append(pair)
    assert pairs, "no greedy request to compare is_greedy on"
    return pairs


def test_join_spanning_pair_is_encoded_as_a_whole(tiny_tokenizer):
    context, continuation = "Once upon a ti", "me there was"
    ctx_ids, cont_ids = encode_pair(tiny_tokenizer, context, continuation)
    whole = tiny_tokenizer.encode(context + continuation)
    assert ctx_ids + cont_ids != whole  # "time" is one token: the context's "ti" is not
    assert cont_ids == whole[len(ctx_ids) :]
    assert cont_ids != tiny_tokenizer.encode(continuation)
    # trailing space of the context moves to the continuation
    ctx_ids, cont_ids = encode_pair(tiny_tokenizer, "Answer: ", "the stars")
    assert ctx_ids == tiny_tokenizer.encode("Answer:")
    assert tiny_tokenizer.decode(cont_ids) == " the stars"


def test_loglikelihoods_match_lm_eval_hf_model(models, tiny_model, tiny_tokenizer, one_thread):
    ours, hf = models
    args = [
        ("Once upon a ti", "me there was"),  # "time" spans the join
        ("Question: What did the robot count? Answer:", " the stars"),
        ("Question: What did the robot count? Answer: ", "the stars"),  # trailing space
        ("Café, na", "ïve, 日本語のテキスト"),  # unicode, a character split at the join
        ("emoji ", "🤖 and tabs\tand newlines\n"),
        ("", "Once upon a time"),  # empty context: predicted from <|endoftext|>
        (LONG, " the stars."),  # longer than the window: cut from the left
        *_greedy_pairs(tiny_model, tiny_tokenizer),
    ]
    assert len(tiny_tokenizer.encode(LONG)) > tiny_model.config.context_length
    mine = ours.loglikelihood(_requests("loglikelihood", args))
    theirs = hf.loglikelihood(_requests("loglikelihood", args))
    for a, (lp, greedy), (hlp, hgreedy) in zip(args, mine, theirs, strict=True):
        assert abs(lp - hlp) <= TOL, (a, lp, hlp)
        assert greedy == hgreedy, a
    assert any(greedy for _, greedy in mine)  # is_greedy is compared on both values
    assert not all(greedy for _, greedy in mine)


def test_rolling_loglikelihoods_match_lm_eval_hf_model(models, one_thread):
    ours, hf = models
    texts = [("Once upon a time",), (LONG + "Café 日本語 🤖",), (LONG * 2,)]
    mine = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
    theirs = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
    for t, a, b in zip(texts, mine, theirs, strict=True):
        assert abs(a - b) <= TOL, (t[0][:30], a, b)


def test_generate_until_matches_lm_eval_hf_model(models, one_thread):
    ours, hf = models
    args = [
        ("Once upon a time", {"until": ["\n"], "max_gen_toks": 12}),
        ("Question: What did the robot count? Answer:", {"until": ["."], "max_gen_toks": 8}),
        ("Café", {"until": ["\n", "robot"], "max_gen_toks": 10}),
    ]
    mine = ours.generate_until(_requests("generate_until", args))
    theirs = hf.generate_until(_requests("generate_until", args))
    assert mine == theirs
    for text, (_, settings) in zip(mine, args, strict=True):
        assert not any(stop in text for stop in settings["until"])


def _task(tmp_path) -> dict:
    """A small multiple-choice task from a local JSON file (lm-eval's own task format)."""
    docs = [
        {"q": "What did the robot count?", "choices": ["the stars", "the cars", "sheep"], "a": 0},
        {"q": "When did it climb the hill?", "choices": ["every night", "at noon"], "a": 0},
        {"q": "Café or tea?", "choices": ["café", "tea", "日本語", "🤖"], "a": 2},
        {"q": "Who liked to count?", "choices": ["a little robot", "a big dog"], "a": 0},
        {"q": "What has tabs?", "choices": ["newlines", "tabs\tand newlines"], "a": 1},
        {"q": "Once upon a", "choices": ["time", "robot", "star"], "a": 0},
    ] * 2
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), "utf-8")
    return {
        "task": "robot_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(data)}},
        "output_type": "multiple_choice",
        "validation_split": "validation",
        "doc_to_text": "Question: {{q}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{a}}",
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True}
            for m in ("acc", "acc_norm")
        ],
    }


def test_task_accuracies_match_lm_eval_hf_model(models, tmp_path, monkeypatch, one_thread):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    ours, hf = models
    results = []
    for lm in (ours, hf):
        out = lm_eval.simple_evaluate(model=lm, tasks=[_task(tmp_path)], log_samples=True)
        results.append(out)
    mine, theirs = (r["results"]["robot_mc"] for r in results)
    assert mine["acc,none"] == theirs["acc,none"]
    assert mine["acc_norm,none"] == theirs["acc_norm,none"]
    # and per request, not just on average
    (ms,), (hs,) = (r["samples"].values() for r in results)
    for m, h in zip(ms, hs, strict=True):
        assert len(m["resps"]) == len(m["doc"]["choices"])  # one response per choice
        for [(a, ga)], [(b, gb)] in zip(m["resps"], h["resps"], strict=True):
            assert abs(a - b) <= TOL and ga == gb


def test_the_registered_model_loads_a_checkpoint(tiny_model, tiny_tokenizer, tmp_path):
    assert get_model("scratchlm") is ScratchLMEval
    ck = save_checkpoint(tiny_model, None, 0, tmp_path / "ck", tokenizer=tiny_tokenizer)
    lm = ScratchLMEval.create_from_arg_string(f"pretrained={ck}", {"batch_size": 4})
    assert lm.batch_size == 4 and lm.max_length == tiny_model.config.context_length
