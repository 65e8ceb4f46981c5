"""Every error of ``scratchlm serve``, as OpenAI's error JSON with the right status: bad
JSON and fields (400), the API key (401), unknown models and paths (404), wrong methods
(405), oversized bodies (413), a full queue (503), and the command's own one-line
errors (a port in use, a bad checkpoint). Raw HTTP where the openai client would hide
the status."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import openai
import pytest

from scratchlm.cli import main

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "hi"}]
MAX_BODY = 4000


def call(url: str, method: str, path: str, body=None, headers=None, chunked=False):
    """``(status, headers, parsed JSON or text)`` of one HTTP request."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
        if chunked:
            body = iter([body[i : i + 1000] for i in range(0, len(body), 1000)])
        connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = connection.getresponse()
        data = response.read().decode()
        kind = response.getheader("content-type", "")
        parsed = json.loads(data) if kind.startswith("application/json") else data
        return response.status, dict(response.getheaders()), parsed
    finally:
        connection.close()


def assert_error(result, status: int, *words: str, param=None):
    """The response is OpenAI's error JSON with ``status``, naming ``words``."""
    got, headers, body = result
    assert got == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    for word in words:
        assert word in body["error"]["message"], body
    if param is not None:
        assert body["error"]["param"] == param
    expected_type = "server_error" if status >= 500 else "invalid_request_error"
    assert body["error"]["type"] == ("authentication_error" if status == 401 else expected_type)
    return body["error"], headers


@pytest.fixture(scope="module")
def server(start_server, checkpoints):
    server = start_server(checkpoints["chat"], "--api-key", KEY, "--max-body", str(MAX_BODY))
    yield server
    assert server.stop() == 0
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log  # 4xx are not server errors


def post(server, path, body, **kw):
    return call(server.url, "POST", path, body, headers={**AUTH, **kw.pop("headers", {})}, **kw)


def test_invalid_json_is_400_not_500(server):
    for raw in (b"{not json", b'{"messages": [', b"\xff\xfe{}", b"   ", b"[" * 3000):
        error, _ = assert_error(post(server, "/v1/chat/completions", raw), 400)
        assert error["code"] == "invalid_json" or "JSON" in error["message"]
    assert_error(post(server, "/v1/completions", [1, 2]), 400, "must be a JSON object")


def test_invalid_fields_name_the_field_and_range(server):
    body = {"model": "chat", "messages": HI, "temperature": 5}
    assert_error(
        post(server, "/v1/chat/completions", body),
        400,
        "temperature",
        "[0, 2]",
        param="temperature",
    )
    client = openai.OpenAI(base_url=server.api, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="chat", prompt="a", logprobs=9)
    assert "logprobs must be an integer from 0 to 5" in str(caught.value)
    assert_error(post(server, "/v1/chat/completions", {"messages": []}), 400, param="messages")
    long_prompt = {"prompt": "a" * 200, "max_tokens": 1}
    assert_error(post(server, "/v1/completions", long_prompt), 400, "200 tokens", "context is 128")
    too_long = [{"role": "system", "content": "b" * 70}, {"role": "user", "content": "c" * 70}]
    assert_error(
        post(server, "/v1/chat/completions", {"messages": too_long}), 400, param="messages"
    )
    unknown_char = {"messages": [{"role": "user", "content": "why~"}]}  # not in the vocab
    assert_error(post(server, "/v1/chat/completions", unknown_char), 400)


def test_unknown_fields_are_ignored(server):
    body = {"messages": HI, "max_tokens": 2, "user": "x", "future_field": {"a": [1]}}
    status, _, answer = post(server, "/v1/chat/completions", body)
    assert status == 200 and answer["choices"][0]["message"]["role"] == "assistant"


def test_the_api_key(server):
    no_key = call(server.url, "POST", "/v1/chat/completions", {"messages": HI})
    _, headers = assert_error(no_key, 401, "API key")
    assert headers.get("www-authenticate") == "Bearer"
    wrong = {"Authorization": f"Bearer {KEY}x"}
    for path in ("/v1/models", "/metrics", "/v1/nothing"):
        assert_error(call(server.url, "GET", path, headers=wrong), 401)
    assert_error(call(server.url, "GET", "/v1/models", headers={"Authorization": KEY}), 401)
    client = openai.OpenAI(base_url=server.api, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    status, _, health = call(server.url, "GET", "/health")  # public, for load balancers
    assert status == 200 and health["status"] == "ok"
    assert call(server.url, "GET", "/")[0] in (200, 404)  # public (404 until the page exists)
    good = openai.OpenAI(base_url=server.api, api_key=KEY, max_retries=0)
    assert [m.id for m in good.models.list().data] == ["chat"]


def test_unknown_model_and_path_are_404(server):
    body = {"model": "gpt-4o", "messages": HI}
    assert_error(post(server, "/v1/chat/completions", body), 404, "gpt-4o", param="model")
    assert_error(post(server, "/v1/completions", {"model": "x", "prompt": "a"}), 404, "'x'")
    assert_error(call(server.url, "GET", "/v1/models/other", headers=AUTH), 404, "other")
    error, _ = assert_error(call(server.url, "GET", "/v1/embeddings", headers=AUTH), 404)
    assert "/v1/embeddings" in error["message"]


def test_wrong_method_is_405(server):
    error, headers = assert_error(
        call(server.url, "GET", "/v1/chat/completions", headers=AUTH), 405
    )
    assert "POST" in headers.get("allow", "") and "GET" in error["message"]
    assert_error(post(server, "/v1/models", {}), 405)


def test_bodies_over_the_limit_are_413(server):
    big = {"messages": [{"role": "user", "content": "a" * MAX_BODY}]}
    assert_error(post(server, "/v1/chat/completions", big), 413, str(MAX_BODY))
    assert_error(post(server, "/v1/chat/completions", big, chunked=True), 413, "--max-body")
    fits = {"messages": HI, "max_tokens": 1, "padding": "x" * (MAX_BODY - 200)}
    assert post(server, "/v1/chat/completions", fits, chunked=True)[0] == 200


def test_metrics_count_requests_by_route_and_status(server):
    status, headers, text = call(server.url, "GET", "/metrics", headers=AUTH)
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'scratchlm_requests_total{route="/v1/chat/completions",status="413"}' in text
    assert 'scratchlm_requests_total{route="/v1/chat/completions",status="401"}' in text
    assert 'scratchlm_requests_total{route="other",status="404"}' in text


def test_a_base_model_answers_completions_but_not_chat(start_server, checkpoints):
    server = start_server(checkpoints["base"])
    try:
        result = call(server.url, "POST", "/v1/chat/completions", {"messages": HI})
        assert_error(result, 400, "not instruction-tuned", "/v1/completions")
        status, _, answer = call(server.url, "POST", "/v1/completions", {"prompt": "ab"})
        assert status == 200 and answer["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        assert server.stop() == 0


def health(server) -> dict:
    return call(server.url, "GET", "/health")[2]


def wait_for(server, **wanted) -> dict:
    """Poll /health until it shows ``wanted`` (an engine step is milliseconds)."""
    for _ in range(600):
        stats = health(server)
        if all(stats[k] == v for k, v in wanted.items()):
            return stats
        time.sleep(0.05)
    raise AssertionError(f"/health never showed {wanted}: {stats}")


def test_a_full_queue_is_503_with_retry_after(start_server, checkpoints):
    server = start_server(checkpoints["endless"], "--max-batch", "1", "--max-queue", "1")
    client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0)
    fields = dict(model="endless", messages=HI, temperature=0, max_tokens=3000, stream=True)
    try:
        running = client.chat.completions.create(**fields)
        next(iter(running))
        wait_for(server, running=1)
        waiting = client.chat.completions.create(**fields)  # queued: headers come at once
        wait_for(server, waiting=1)
        full = call(server.url, "POST", "/v1/chat/completions", {"messages": HI})
        error, headers = assert_error(full, 503, "busy")
        assert headers["retry-after"] == "1" and error["code"] == "queue_full"
        waiting.close()  # a client leaving the queue frees its place
        wait_for(server, waiting=0)
        running.close()
        wait_for(server, running=0)
        status, _, answer = call(
            server.url,
            "POST",
            "/v1/completions",
            {"prompt": "a", "max_tokens": 2, "temperature": 0},  # greedy: never the stop id
        )
        assert status == 200 and answer["usage"]["completion_tokens"] == 2
    finally:
        assert server.stop() == 0


def serve_error(capsys, *argv: str) -> str:
    """The one stderr line of ``scratchlm serve ARGV`` failing before it serves (run in
    this process: these errors come before the model loads)."""
    code = main(["serve", *argv, "--device", "cpu"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("scratchlm: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["{missing}"], "{missing} is neither a checkpoint directory"),
        ([], "no checkpoint found under runs/"),
        (["{chat}", "--max-batch", "0"], "--max-batch must be at least 1, got 0"),
        (["{chat}", "--port", "70000"], "--port must be at most 65535"),
        (["{chat}", "--max-body", "0"], "--max-body must be at least 1"),
        (["{chat}", "--api-key", " "], "--api-key is empty"),
        (["{chat}", "--host", "no-such-host.invalid"], "--host no-such-host.invalid"),
    ],
)
def test_bad_arguments_are_one_line(capsys, checkpoints, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    names = {"missing": str(tmp_path / "missing"), "chat": str(checkpoints["chat"])}
    line = serve_error(capsys, *(a.format(**names) for a in argv))
    assert words.format(**names) in line


def test_a_port_in_use_is_one_line(capsys, server, checkpoints):
    port = str(urlsplit(server.url).port)
    line = serve_error(capsys, str(checkpoints["chat"]), "--port", port)
    assert f"port {port} on 127.0.0.1 is already in use" in line and "--port" in line
