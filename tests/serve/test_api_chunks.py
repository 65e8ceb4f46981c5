"""Engine events -> OpenAI bodies and stream chunks (serve.chunks), with made-up events:
the cases a real model rarely produces (a generation that fails mid-stream, the engine
shutting down, a logprob of -inf)."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from scratchlm.serve.chunks import Reply, chat_body, chat_chunks, completion_chunks
from scratchlm.serve.engine import FinishEvent, TokenEvent, TokenLogprob
from scratchlm.serve.prompts import Prompt
from scratchlm.serve.protocol import APIError, parse_chat, parse_completion
from scratchlm.tokenizer import CharTokenizer

TOK = CharTokenizer("abc", ["<|endoftext|>"])
REPLY = Reply("chatcmpl-1", 1, "m")


def events(*tagged):
    async def gen():
        for item in tagged:
            yield item

    return gen()


def run_chunks(stream) -> list[dict]:
    async def drain():
        return [item async for item in stream]

    items = asyncio.run(drain())
    json.dumps(items, allow_nan=False)  # valid JSON, as the wire needs
    return items


def token(text: str, logprob: float | None = None) -> TokenEvent:
    token_id = TOK.encode(text)[0] if text else 0
    lp = None if logprob is None else TokenLogprob(token_id, logprob, ((token_id, logprob),))
    return TokenEvent(token_id, text, lp)


def test_a_failed_generation_ends_the_stream_with_an_error_item():
    request = parse_chat({"messages": [{"role": "user", "content": "a"}], "stream": True})
    items = run_chunks(
        chat_chunks(
            REPLY,
            request,
            TOK,
            events((0, token("a")), (0, FinishEvent("error", "", 1, 1, error="boom"))),
            1,
        )
    )
    assert items[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert items[1]["choices"][0]["delta"] == {"content": "a"}
    assert items[2] == {
        "error": {
            "message": "generation failed: boom",
            "type": "server_error",
            "param": None,
            "code": "generation_error",
        }
    }
    assert len(items) == 3


def test_a_finished_body_with_a_failure_is_an_error_status():
    request = parse_chat({"messages": [{"role": "user", "content": "a"}], "n": 2})
    results = [
        ([token("a")], FinishEvent("stop", "", 1, 2)),
        ([], FinishEvent("error", "", 1, 0, error="x")),
    ]
    with pytest.raises(APIError) as caught:
        chat_body(REPLY, request, TOK, results)
    assert caught.value.status == 500
    shutdown = [([], FinishEvent("cancelled", "", 1, 0))]
    with pytest.raises(APIError, match="shutting down") as caught:
        chat_body(
            REPLY, parse_chat({"messages": [{"role": "user", "content": "a"}]}), TOK, shutdown
        )
    assert caught.value.status == 503


def test_held_back_text_and_usage_close_a_stream():
    request = parse_completion(
        {
            "prompt": "a",
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": 1,
        }
    )
    prompt = Prompt((1,), "a", ())
    items = run_chunks(
        completion_chunks(
            REPLY,
            request,
            TOK,
            [prompt],
            events(
                (1, token("b", -math.inf)),
                (0, token("", -0.5)),  # text held back (a possible stop string)
                (0, FinishEvent("stop", "c", 1, 2)),
                (1, FinishEvent("length", "", 1, 1)),
            ),
        )
    )
    choices = [item["choices"][0] if item["choices"] else None for item in items]
    assert choices[0]["index"] == 1 and choices[0]["text"] == "b"
    assert choices[0]["logprobs"]["token_logprobs"] == [-9999.0]  # JSON has no -inf
    assert choices[1]["text"] == "" and choices[1]["logprobs"]["token_logprobs"] == [-0.5]
    assert (choices[2]["text"], choices[2]["finish_reason"]) == ("c", "stop")
    assert (choices[3]["index"], choices[3]["finish_reason"]) == (1, "length")
    assert items[4]["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    assert all(item["usage"] is None for item in items[:4])
