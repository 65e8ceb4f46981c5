"""``scratchlm serve`` under load and when clients leave: 32 concurrent streaming
clients with random cancellations (0 errors, 0 requests left running), a client that
disconnects mid-stream or while waiting for a whole answer stops its generation, and
SIGTERM / Ctrl-C shut the server down cleanly mid-answer.

The "endless" model greedily repeats a space until its 4096-token context is full, so
answers last as long as a test needs and end by max_tokens ("length")."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import signal
import socket
import time
from urllib.parse import urlsplit

import openai
import pytest

from scratchlm.serve.metrics import parse_samples

HI = [{"role": "user", "content": "hi"}]
CANCELLED = 'scratchlm_generations_finished_total{reason="cancelled"}'
GENERATED = "scratchlm_generated_tokens_total"


@pytest.fixture(scope="module")
def server(start_server, checkpoints):
    server = start_server(checkpoints["endless"], "--max-batch", "8")
    yield server
    assert server.stop(signal.SIGINT) == 0  # Ctrl-C: a clean exit too
    assert "Traceback" not in server.log(), server.log()


def get(server, path: str) -> str:
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def metrics(server) -> dict[str, float]:
    return parse_samples(get(server, "/metrics"))


def wait_idle(server) -> dict:
    """Poll /health until no request runs or waits (each engine step is milliseconds)."""
    for _ in range(1200):
        stats = json.loads(get(server, "/health"))
        if stats["running"] == 0 and stats["waiting"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"requests still running: {stats}")


def wait_running(server, count: int) -> None:
    for _ in range(1200):
        if json.loads(get(server, "/health"))["running"] >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"never {count} running")


def test_32_concurrent_streams_with_random_cancellations(server):
    async def main() -> list:
        client = openai.AsyncOpenAI(base_url=server.api, api_key="unused", max_retries=0)
        rng = random.Random(0)

        async def one(i: int) -> tuple[int, int, str | None, bool]:
            cancel_after = rng.randint(1, 10) if i % 3 == 0 else None
            # A client that leaves does so long before its answer could end.
            max_tokens = rng.randint(5, 60) if cancel_after is None else 3000
            chunks, text, finish = 0, "", None
            if i % 2:
                stream = await client.chat.completions.create(
                    model="endless", messages=HI, temperature=0, max_tokens=max_tokens, stream=True
                )
                async for chunk in stream:
                    chunks += 1
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                        finish = chunk.choices[0].finish_reason or finish
                    if cancel_after is not None and chunks >= cancel_after:
                        await stream.close()
                        break
            else:
                stream = await client.completions.create(
                    model="endless", prompt="ab", temperature=0, max_tokens=max_tokens, stream=True
                )
                async for chunk in stream:
                    chunks += 1
                    text += chunk.choices[0].text
                    finish = chunk.choices[0].finish_reason or finish
                    if cancel_after is not None and chunks >= cancel_after:
                        await stream.close()
                        break
            return max_tokens, len(text), finish, cancel_after is not None and finish is None

        results = await asyncio.gather(*(one(i) for i in range(32)), return_exceptions=True)
        await client.close()
        return results

    before = metrics(server)
    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    cancelled = 0
    for max_tokens, length, finish, was_cancelled in results:
        if was_cancelled:
            cancelled += 1
        else:  # spaces until max_tokens
            assert (finish, length) == ("length", max_tokens)
    assert cancelled > 0
    stats = wait_idle(server)
    assert stats["running"] == 0
    after = metrics(server)
    assert after[CANCELLED] - before.get(CANCELLED, 0) == cancelled
    assert after['scratchlm_requests_total{route="/v1/chat/completions",status="200"}'] >= 16


def test_a_client_leaving_mid_stream_stops_its_generation(server):
    client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0)
    before = metrics(server)
    stream = client.chat.completions.create(
        model="endless", messages=HI, temperature=0, max_tokens=4000, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    wait_idle(server)
    stopped = metrics(server)
    time.sleep(0.3)  # dozens of decode steps: a generation left running would show
    assert metrics(server)[GENERATED] == stopped[GENERATED]
    assert stopped[CANCELLED] == before.get(CANCELLED, 0) + 1
    assert stopped[GENERATED] - before[GENERATED] < 4000


def test_a_client_leaving_before_its_whole_answer_stops_it(server):
    before = metrics(server)
    parts = urlsplit(server.url)
    body = json.dumps({"prompt": "a", "max_tokens": 4000, "temperature": 0}).encode()
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_running(server, 1)
    wait_idle(server)
    after = metrics(server)
    assert after[CANCELLED] == before.get(CANCELLED, 0) + 1
    assert after[GENERATED] - before[GENERATED] < 4000
    assert after['scratchlm_requests_total{route="/v1/completions",status="499"}'] >= 1


def test_sigterm_stops_the_server_mid_answer(start_server, checkpoints):
    server = start_server(checkpoints["endless"])
    client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="endless", messages=HI, temperature=0, max_tokens=4000, stream=True
    )
    pieces = iter(stream)
    next(pieces)
    server.process.send_signal(signal.SIGTERM)
    with pytest.raises(openai.APIError, match="shutting down"):
        for _ in pieces:
            pass
    assert server.stop() == 0
    log = server.log()
    assert "Traceback" not in log and log.strip().endswith("scratchlm serve: stopped"), log
