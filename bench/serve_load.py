"""The client side of ``bench_serve.py``: streaming chat requests from N concurrent
clients against any OpenAI-compatible server, and what they saw.

Each client is an asyncio task that sends its requests one after another (a new one as
soon as the last one ended) through one shared ``httpx.AsyncClient``, reads the SSE
stream and records, per request, when it was sent, when each content chunk arrived and
how many tokens it got (the server's ``usage`` when it sends one, else one per content
chunk). A request can be cancelled mid-stream (the client closes the connection), as a
user pressing Stop does.

Nothing here imports torch: the client must cost the server's cores as little as it can.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import time
from dataclasses import dataclass, field

try:  # the client the openai package uses (openai >= 3 ships it as httpx2)
    import httpx2 as httpx
except ImportError:
    import httpx

QUESTIONS = (
    "Why is the sky blue?",
    "What do plants need to grow?",
    "How does a magnet work? Explain it to a child.",
    "Name three planets and say one thing about each.",
    "What is the boiling point of water at sea level, and why does it change on a mountain?",
    "Write a short poem about the sea.",
    "What is a prime number?",
    "How do bees make honey?",
)


@dataclass
class Outcome:
    """One request as the client saw it (times in seconds from the run's start)."""

    sent: float
    chunk_times: list[float] = field(default_factory=list)  # content chunks only
    tokens: int = 0
    cancelled: bool = False
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.sent if self.chunk_times else None

    def gaps(self) -> list[float]:
        """Inter-token latencies: the time between consecutive content chunks."""
        t = self.chunk_times
        return [b - a for a, b in itertools.pairwise(t)]


@dataclass
class LoadResult:
    clients: int
    wall_s: float
    outcomes: list[Outcome]

    @property
    def errors(self) -> list[str]:
        return [o.error for o in self.outcomes if o.error]

    @property
    def tokens(self) -> int:
        return sum(o.tokens for o in self.outcomes)

    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def ttft(self, q: float) -> float:
        return quantile([o.ttft for o in self.outcomes if o.ttft is not None], q)

    def itl(self, q: float) -> float:
        return quantile([g for o in self.outcomes for g in o.gaps()], q)

    def mean_tokens(self) -> float:
        done = [o.tokens for o in self.outcomes if not o.cancelled and not o.error]
        return statistics.fmean(done) if done else 0.0


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def one_request(
    client: httpx.AsyncClient,
    url: str,
    body: dict,
    start: float,
    cancel_after: int | None = None,
) -> Outcome:
    """Send one streaming chat request; stop reading after ``cancel_after`` content
    chunks (closing the connection) when given."""
    out = Outcome(sent=time.perf_counter() - start)
    usage_tokens = None
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                out.error = f"HTTP {response.status_code}: {text[:200]}"
                return out
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    out.error = str(event["error"])[:200]
                    break
                if event.get("usage"):
                    usage_tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        out.chunk_times.append(time.perf_counter() - start)
                if cancel_after is not None and len(out.chunk_times) >= cancel_after:
                    out.cancelled = True
                    break  # leaving the block closes the connection
    except httpx.HTTPError as e:
        out.error = f"{type(e).__name__}: {e}"
    out.tokens = usage_tokens if usage_tokens is not None else len(out.chunk_times)
    return out


async def run_load(
    base_url: str,
    model: str,
    clients: int,
    requests_per_client: int,
    max_tokens: int | list[int],
    *,
    cancel_fraction: float = 0.0,
    seed: int = 0,
    api_key: str = "none",
) -> LoadResult:
    """``clients`` concurrent clients, each sending ``requests_per_client`` streaming
    greedy chat requests in turn. ``max_tokens``: one budget, or a list to draw each
    request's budget from; ``cancel_fraction`` of the requests are cancelled after a
    random number of chunks."""
    rng = random.Random(seed)
    plans = []
    for c in range(clients):
        for r in range(requests_per_client):
            budget = rng.choice(max_tokens) if isinstance(max_tokens, list) else max_tokens
            cancel = rng.randint(1, max(1, budget // 2)) if rng.random() < cancel_fraction else None
            plans.append((c, r, budget, cancel, QUESTIONS[(c + r) % len(QUESTIONS)]))
    url = base_url.rstrip("/") + "/chat/completions"
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    headers = {"Authorization": f"Bearer {api_key}"}
    timeout = httpx.Timeout(600.0, connect=30.0)
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=timeout) as client:
        start = time.perf_counter()

        async def client_task(c: int) -> list[Outcome]:
            mine = [p for p in plans if p[0] == c]
            results = []
            for _, _, budget, cancel, question in mine:
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": budget,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                results.append(await one_request(client, url, body, start, cancel))
            return results

        per_client = await asyncio.gather(*(client_task(c) for c in range(clients)))
        wall = time.perf_counter() - start
    return LoadResult(clients, wall, [o for outs in per_client for o in outs])
