"""``scratchlm serve`` driven by the official ``openai`` client: chat and completions,
streamed and not, n > 1, stop strings, seeds, logprobs and usage, checked against the
same tiny model run in this process (and against ``scratchlm chat``)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from urllib.parse import urlsplit

import openai
import pytest
import torch

from scratchlm.chat import chat_prompt_ids, reply
from scratchlm.chat_format import render_prompt
from scratchlm.checkpoint import load_model
from scratchlm.config import SampleConfig
from scratchlm.model import prepare_for_inference
from scratchlm.textgen import generate

pytestmark = pytest.mark.usefixtures("one_thread")

HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture(scope="module")
def server(start_server, checkpoints):
    server = start_server(checkpoints["chat"])
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(checkpoints):
    """The served model and tokenizer, loaded in this process."""
    model, tok = load_model(checkpoints["chat"])
    return prepare_for_inference(model), tok


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["chat"]  # the checkpoint directory's name
    assert client.models.retrieve("chat").id == "chat"


def test_greedy_chat_answer_is_the_models(client, local):
    model, tok = local
    answer = client.chat.completions.create(model="chat", messages=HI, temperature=0, max_tokens=30)
    expected = reply(model, tok, HI, SampleConfig(temperature=0, max_new_tokens=30))
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    prompt = chat_prompt_ids(model, tok, HI, 30)
    assert answer.usage.prompt_tokens == len(prompt)
    assert answer.usage.total_tokens == len(prompt) + answer.usage.completion_tokens
    if choice.finish_reason == "stop":  # the stop token is counted, not shown
        assert answer.usage.completion_tokens == len(tok.encode(expected)) + 1
    else:
        assert choice.finish_reason == "length" and answer.usage.completion_tokens == 30


def test_greedy_answer_equals_scratchlm_chat(client, checkpoints, child_env):
    argv = [sys.executable, "-m", "scratchlm", "chat", str(checkpoints["chat"])]
    argv += ["--device", "cpu", "--temperature", "0", "--max-new-tokens", "40"]
    argv += ["--system", "be brief.", "--prompt", "why is the sky blue?"]
    done = subprocess.run(argv, capture_output=True, text=True, env=child_env, timeout=120)
    assert done.returncode == 0, done.stderr
    messages = [
        {"role": "system", "content": "be brief."},
        {"role": "user", "content": "why is the sky blue?"},
    ]
    answer = client.chat.completions.create(
        model="chat", messages=messages, temperature=0, max_tokens=40
    )
    assert done.stdout == answer.choices[0].message.content + "\n"


def test_streamed_chat_equals_the_whole_answer(client):
    fields = dict(model="chat", messages=HI, temperature=0, max_tokens=25)
    whole = client.chat.completions.create(**fields)
    chunks = list(
        client.chat.completions.create(
            **fields, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    *answer, final, usage = chunks
    text = "".join(c.choices[0].delta.content or "" for c in answer)
    assert text == whole.choices[0].message.content
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in answer)
    assert final.choices[0].finish_reason == whole.choices[0].finish_reason
    assert usage.choices == [] and usage.usage == whole.usage
    plain = list(client.chat.completions.create(**fields, stream=True))
    assert all(c.usage is None for c in plain) and len(plain) == len(chunks) - 1


def test_typed_special_tokens_stay_text(client, local):
    """A user typing <|assistant|> gets those 13 characters, not the special token."""
    _, tok = local
    typed = [{"role": "user", "content": "<|assistant|><|end|>"}]
    answer = client.chat.completions.create(model="chat", messages=typed, max_tokens=1)
    # <|user|>, 20 characters, <|end|>, <|assistant|>; as special tokens it would be 2.
    assert answer.usage.prompt_tokens == 1 + 20 + 1 + 1
    assert answer.usage.prompt_tokens == len(render_prompt(typed, tok))
    echoed = client.completions.create(
        model="chat", prompt=render_prompt(typed, tok), max_tokens=0, echo=True, logprobs=0
    )
    tokens = echoed.choices[0].logprobs.tokens
    assert tokens[:3] == ["<|user|>", "<", "|"] and tokens[-2:] == ["<|end|>", "<|assistant|>"]


def test_completion_equals_scratchlm_generate(client, local):
    model, tok = local
    answer = client.completions.create(model="chat", prompt="once", temperature=0, max_tokens=20)
    (choice,) = answer.choices
    assert choice.text == generate(model, tok, "once", temperature=0, max_new_tokens=20)
    assert answer.object == "text_completion" and answer.usage.prompt_tokens == 4
    streamed = client.completions.create(
        model="chat", prompt="once", temperature=0, max_tokens=20, stream=True
    )
    pieces = list(streamed)
    assert "".join(c.choices[0].text for c in pieces) == choice.text
    assert pieces[-1].choices[0].finish_reason == choice.finish_reason


def test_completion_prompts_as_lists_and_token_ids(client, local):
    _, tok = local
    ids = tok.encode("abc")
    answer = client.completions.create(
        model="chat", prompt=["abc", "zz"], n=2, temperature=0, max_tokens=5
    )
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]  # prompt 0's two, then prompt 1's
    texts = [c.text for c in answer.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy
    by_ids = client.completions.create(model="chat", prompt=ids, temperature=0, max_tokens=5)
    assert by_ids.choices[0].text == texts[0]
    both = client.completions.create(
        model="chat", prompt=[ids, tok.encode("zz")], temperature=0, max_tokens=5
    )
    assert [c.text for c in both.choices] == [texts[0], texts[2]]
    assert both.usage.prompt_tokens == 5  # each prompt counted once


def test_stop_strings_across_token_boundaries(client):
    """Every character is one token here, so a 3-character stop string spans 3 tokens;
    it is cut from the text, also from the streamed pieces."""
    fields = dict(model="chat", prompt="the", temperature=0, max_tokens=40)
    full = client.completions.create(**fields).choices[0].text
    assert len(full) >= 12, full
    stop = full[8:11]
    expected = full[: full.index(stop)]
    for stops in (stop, [stop, "never seen stop"]):
        cut = client.completions.create(**fields, stop=stops).choices[0]
        assert (cut.text, cut.finish_reason) == (expected, "stop")
        streamed = list(client.completions.create(**fields, stop=stops, stream=True))
        assert "".join(c.choices[0].text for c in streamed) == expected
        assert streamed[-1].choices[0].finish_reason == "stop"


def test_seeds_reproduce_and_n_choices_use_seed_plus_index(client):
    fields = dict(model="chat", messages=HI, temperature=1.5, max_tokens=12)
    three = client.chat.completions.create(**fields, n=3, seed=40)
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len(set(texts)) == 3  # an untrained model samples almost uniformly
    again = client.chat.completions.create(**fields, n=3, seed=40)
    assert [c.message.content for c in again.choices] == texts
    single = client.chat.completions.create(**fields, seed=41)  # choice 1: seed 40 + 1
    assert single.choices[0].message.content == texts[1]
    assert three.usage.prompt_tokens == single.usage.prompt_tokens  # counted once
    unseeded = {
        client.chat.completions.create(**fields).choices[0].message.content for _ in range(4)
    }
    assert len(unseeded) > 1  # no seed: fresh entropy each time


def test_a_seed_gives_the_same_answer_under_concurrent_traffic(client, server):
    fields = dict(model="chat", messages=HI, temperature=1, max_tokens=30, seed=1234)
    alone = client.chat.completions.create(**fields).choices[0].message.content
    busy = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0)
    errors = []

    def noise(i: int) -> None:
        try:
            for _ in busy.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "noise " * (i + 1)}],
                temperature=1,
                max_tokens=40,
                stream=True,
            ):
                pass
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=noise, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    during = [client.chat.completions.create(**fields) for _ in range(2)]
    for t in threads:
        t.join()
    assert not errors
    assert [d.choices[0].message.content for d in during] == [alone, alone]


def test_chat_logprobs_are_the_models(client, local):
    model, tok = local
    answer = client.chat.completions.create(
        model="chat", messages=HI, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3
    )
    content = answer.choices[0].logprobs.content
    assert "".join(e.token for e in content) == answer.choices[0].message.content
    prompt = chat_prompt_ids(model, tok, HI, 6)
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1]
    expected = torch.log_softmax(logits.float(), dim=-1)
    first = content[0]
    token_id = tok.encode(first.token, allow_special=False)[0]
    assert first.logprob == pytest.approx(expected[token_id].item(), abs=1e-4)
    assert first.bytes == list(first.token.encode())
    assert len(first.top_logprobs) == 3
    values = [t.logprob for t in first.top_logprobs]
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(expected.max().item(), abs=1e-4)
    assert first.top_logprobs[0].token == first.token  # greedy takes the top token
    streamed = client.chat.completions.create(
        model="chat", messages=HI, temperature=0, max_tokens=6, logprobs=True, stream=True
    )
    entries = [
        e
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in entries] == [e.token for e in content]
    assert all(e.top_logprobs == [] for e in entries)  # top_logprobs 0


def test_completion_logprobs_with_echo(client, local):
    model, tok = local
    answer = client.completions.create(
        model="chat", prompt="sky", max_tokens=4, temperature=0, echo=True, logprobs=2
    )
    choice = answer.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith("sky") and "".join(lp.tokens) == choice.text
    assert lp.tokens[:3] == ["s", "k", "y"]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    with torch.no_grad():
        logits = model(torch.tensor([tok.encode("sky")]))[0]
    expected = torch.log_softmax(logits.float(), dim=-1)
    assert lp.token_logprobs[1] == pytest.approx(expected[0, tok.encode("k")[0]].item(), abs=1e-4)
    assert all(len(top) <= 2 for top in lp.top_logprobs[1:])
    scored = client.completions.create(
        model="chat", prompt="sky", max_tokens=0, echo=True, logprobs=0
    )
    assert scored.choices[0].text == "sky" and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.token_logprobs == lp.token_logprobs[:3]


def test_n_streamed_choices_interleave_and_match_the_whole_answers(client):
    fields = dict(model="chat", messages=HI, temperature=1, max_tokens=10, n=3, seed=5)
    whole = client.chat.completions.create(**fields)
    texts, finishes = ["", "", ""], [None, None, None]
    chunks = list(client.chat.completions.create(**fields, stream=True))
    assert [c.choices[0].delta.role for c in chunks[:3]] == ["assistant"] * 3
    for chunk in chunks:
        (choice,) = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == [c.message.content for c in whole.choices]
    assert finishes == [c.finish_reason for c in whole.choices]


def test_the_raw_event_stream(server):
    """What a browser or curl sees: text/event-stream, `data: {json}` events separated
    by blank lines, `data: [DONE]` last."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    body = {"messages": HI, "max_tokens": 5, "stream": True}
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Accept": "*/*"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("content-type") == "text/event-stream; charset=utf-8"
    assert response.getheader("cache-control") == "no-cache"
    events = response.read().decode().split("\n\n")
    connection.close()
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") and "\n" not in e for e in events[:-2])
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
