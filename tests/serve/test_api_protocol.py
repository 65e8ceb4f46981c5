"""OpenAI request bodies -> validated requests (serve.protocol), without a server."""

from __future__ import annotations

import pytest

from scratchlm.config import SampleConfig
from scratchlm.serve.protocol import (
    DEFAULT_COMPLETION_TOKENS,
    SEED_MAX,
    APIError,
    choice_seed,
    parse_chat,
    parse_completion,
)

USER = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return parse_chat({"model": "m", "messages": USER, **fields})


def refused(parse, body: dict) -> APIError:
    with pytest.raises(APIError) as caught:
        parse(body)
    assert caught.value.status == 400
    return caught.value


def test_a_full_chat_request():
    request = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": t} for t in "ab"]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "<|assistant|>"},
        ],
        max_tokens=5,
        temperature=0,
        top_p=0.5,
        top_k=-1,
        min_p=0.1,
        presence_penalty=-2,
        frequency_penalty=2,
        repetition_penalty=1.3,
        stop="xy",
        seed=7,
        n=3,
        stream=True,
        stream_options={"include_usage": True},
        logprobs=True,
        top_logprobs=4,
        user="someone",  # unknown and extra fields are ignored
        whatever={"nested": 1},
    )
    c = request.common
    assert request.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "<|assistant|>"},
    )
    assert (c.model, c.max_tokens, c.n, c.stream, c.include_usage) == ("m", 5, 3, True, True)
    assert c.sample == SampleConfig(
        temperature=0,
        top_p=0.5,
        top_k=0,
        min_p=0.1,
        presence_penalty=-2,
        frequency_penalty=2,
        repetition_penalty=1.3,
        seed=7,
        stop=["xy"],
    )
    assert request.logprobs == 4


def test_chat_defaults_are_scratchlms_sampling_defaults():
    request = parse_chat({"messages": USER, "temperature": None})
    c = request.common
    assert c.sample == SampleConfig() and c.model is None and c.max_tokens is None
    assert (c.n, c.stream, c.include_usage, request.logprobs) == (1, False, False, None)
    assert chat(logprobs=True).logprobs == 0


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=9, max_completion_tokens=3).common.max_tokens == 3
    assert chat(max_tokens=9).common.max_tokens == 9


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("temperature", 2.5, "temperature must be a number in [0, 2], got 2.5"),
        ("temperature", "hot", "temperature must be a number in [0, 2]"),
        ("temperature", True, "temperature must be a number"),
        ("top_p", 0, "top_p must be a number in (0, 1], got 0"),
        ("min_p", 1, "min_p must be a number in [0, 1), got 1"),
        ("presence_penalty", -2.1, "presence_penalty must be a number in [-2, 2]"),
        ("frequency_penalty", 3, "frequency_penalty must be a number in [-2, 2]"),
        ("repetition_penalty", 0, "repetition_penalty must be a number in (0, 10]"),
        ("top_k", -2, "top_k must be an integer >= -1, got -2"),
        ("max_tokens", 0, "max_tokens must be an integer >= 1, got 0"),
        ("max_completion_tokens", 1.5, "max_completion_tokens must be an integer >= 1"),
        ("n", 17, "n must be an integer from 1 to 16, got 17"),
        ("seed", SEED_MAX + 1, "seed must be an integer from"),
        ("stop", ["a", 1], "stop must be a string or a list of strings"),
        ("stop", ["s"] * 17, "stop may hold at most 16 strings, got 17"),
        ("stream", "yes", "stream must be true or false"),
        ("top_logprobs", 21, "top_logprobs must be an integer from 0 to 20, got 21"),
        ("tools", [{"type": "function"}], "tools are not supported"),
        ("response_format", {"type": "json_object"}, "response_format"),
        ("logit_bias", {"5": 10}, "logit_bias is not supported"),
    ],
)
def test_a_bad_chat_field_is_named_with_its_range(field, value, words):
    error = refused(parse_chat, {"messages": USER, field: value})
    assert error.param == field and words in error.message
    assert error.body() == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": field,
            "code": "invalid_value",
        }
    }


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    [
        (None, "messages", "messages must be a non-empty list"),
        ([], "messages", "messages must be a non-empty list"),
        (["hi"], "messages[0]", "must be an object"),
        ([{"role": "tool", "content": "x"}], "messages[0].role", "system, user or assistant"),
        ([{"role": "user"}], "messages[0].content", "has no content"),
        ([{"role": "user", "content": 5}], "messages[0].content", "a string or a list"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[0].content[0]",
            "'image_url': only text parts",
        ),
        ([{"role": "user", "content": c} for c in "ab"], "messages", "take turns"),
        ([{"role": "assistant", "content": "a"}], "messages", "user was expected"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "messages",
            "the last message must be a user message",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
            "messages",
            "only the first message may be one",
        ),
    ],
)
def test_a_bad_conversation_is_named(messages, param, words):
    error = refused(parse_chat, {"messages": messages})
    assert error.param == param and words in error.message


def test_stream_options_and_top_logprobs_need_their_switch():
    error = refused(parse_chat, {"messages": USER, "stream_options": {"include_usage": True}})
    assert error.param == "stream_options" and "only allowed when stream is true" in error.message
    error = refused(parse_chat, {"messages": USER, "top_logprobs": 2})
    assert error.param == "top_logprobs" and "logprobs: true" in error.message


def test_a_body_that_is_no_object_is_refused():
    for parse in (parse_chat, parse_completion):
        assert "must be a JSON object" in refused(parse, [1, 2]).message


def test_completion_prompts_in_all_four_shapes():
    assert parse_completion({"prompt": "once"}).prompts == ("once",)
    assert parse_completion({"prompt": ["a", "b"]}).prompts == ("a", "b")
    assert parse_completion({"prompt": [1, 2, 3]}).prompts == ((1, 2, 3),)
    assert parse_completion({"prompt": [[1], [2, 3]]}).prompts == ((1,), (2, 3))
    for bad in (None, [], 5, [[]], ["a", 1], [[1], "b"], [1.5]):
        assert refused(parse_completion, {"prompt": bad}).param == "prompt"


def test_completion_fields():
    request = parse_completion({"prompt": "x", "echo": True, "logprobs": 5, "n": 2, "best_of": 2})
    assert (request.echo, request.logprobs, request.common.n) == (True, 5, 2)
    assert request.common.max_tokens == DEFAULT_COMPLETION_TOKENS
    assert parse_completion({"prompt": "x", "max_tokens": 0}).common.max_tokens == 0
    assert parse_completion({"prompt": "x"}).logprobs is None


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"logprobs": 6}, "logprobs", "logprobs must be an integer from 0 to 5, got 6"),
        ({"suffix": "end"}, "suffix", "suffix is not supported"),
        ({"best_of": 3}, "best_of", "best_of must equal n (1)"),
        ({"max_tokens": -1}, "max_tokens", "max_tokens must be an integer >= 0"),
        ({"prompt": ["a"] * 5, "n": 16}, "n", "prompts x n must be at most 64, got 5 x 16"),
        (
            {"stream": True, "echo": True, "logprobs": 1},
            "logprobs",
            "echo with logprobs is only available without streaming",
        ),
    ],
)
def test_a_bad_completion_field_is_named(fields, param, words):
    error = refused(parse_completion, {"prompt": "x", **fields})
    assert error.param == param and words in error.message


def test_choice_seeds_differ_and_wrap():
    assert [choice_seed(7, i) for i in range(3)] == [7, 8, 9]
    assert choice_seed(None, 2) is None
    assert choice_seed(SEED_MAX, 1) == 0


def test_other_statuses_have_openai_error_types():
    assert APIError(401, "no key").type == "authentication_error"
    assert APIError(404, "no such model").type == "invalid_request_error"
    assert APIError(503, "busy", headers={"Retry-After": "1"}).type == "server_error"
    assert APIError(500, "bug").body()["error"]["type"] == "server_error"
