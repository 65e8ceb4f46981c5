"""Prometheus metrics, written in its text exposition format (version 0.0.4) by hand.

A ``Registry`` holds counters, gauges and histograms, each with optional labels, and
``render()`` writes them all::

    # HELP scratchlm_requests_total HTTP requests answered, by route and status.
    # TYPE scratchlm_requests_total counter
    scratchlm_requests_total{route="/v1/chat/completions",status="200"} 3

A histogram writes one cumulative ``_bucket`` line per upper bound (``le``), the last
being ``+Inf``, then ``_sum`` and ``_count``. Every server builds its own registry (no
module-level state); updates take a lock, so any thread may record.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence

from scratchlm.serve.engine import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    """A label value as the format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(value)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str], lock: threading.Lock) -> None:
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._lock = lock

    def _key(self, labels: dict[str, str]) -> LabelValues:
        assert set(labels) == set(self.label_names), (
            f"{self.name} takes labels {self.label_names}, got {sorted(labels)}"
        )
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class _Valued(_Metric):
    """A metric with one number per label combination."""

    def __init__(self, name: str, help: str, labels: Sequence[str], lock: threading.Lock) -> None:
        super().__init__(name, help, labels, lock)
        self._values: dict[LabelValues, float] = {}
        if not self.label_names:
            self._values[()] = 0.0  # an unlabelled metric shows 0 before its first update

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        body = [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]
        return self.header() + body


class Counter(_Valued):
    """A total that only grows. ``inc`` counts here; ``set`` mirrors a total counted
    elsewhere (the engine's token counters), which must not decrease either."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        assert amount >= 0, f"counter {self.name} cannot decrease (inc {amount})"
        with self._lock:
            key = self._key(labels)
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Valued):
    """A value that goes up and down (queue depth, running requests)."""

    kind = "gauge"


class Histogram(_Metric):
    """Observations counted in cumulative buckets by upper bound, with their sum."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, buckets: Sequence[float], lock: threading.Lock
    ) -> None:
        super().__init__(name, help, (), lock)
        assert list(buckets) == sorted(set(buckets)) and buckets, f"bad buckets {buckets}"
        self.bounds = [float(b) for b in buckets if not math.isinf(b)] + [math.inf]
        self._counts = [0] * len(self.bounds)  # per bucket, not yet cumulative
        self._sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.bounds, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def lines(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out = self.header()
        running = 0
        for bound, count in zip(self.bounds, counts, strict=True):
            running += count
            out.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        out.append(f"{self.name}_sum {_number(total)}")
        out.append(f"{self.name}_count {running}")
        return out


class Registry:
    """The metrics of one server, rendered in registration order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        assert metric.name not in self._metrics, f"metric {metric.name} registered twice"
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels, self._lock))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels, self._lock))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, buckets: Sequence[float]) -> Histogram:
        return self._add(Histogram(name, help, buckets, self._lock))  # type: ignore[return-value]

    def render(self) -> str:
        """Every metric in the text format, ending with a newline."""
        return "".join(line + "\n" for m in self._metrics.values() for line in m.lines())


def parse_samples(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` for every sample line of a text exposition (comments
    skipped): a reader for tests and scripts, not a full parser (labels must not hold
    spaces)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


# ------------------------------------------------------------ the server's metrics

# Seconds. Time to first token spans a queue wait; inter-token latency one decode step.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
ROUTES = (
    "/",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/metrics",
)


class ServerMetrics:
    """What ``GET /metrics`` shows: requests by route and status, time to first token
    and inter-token latency (seen by the HTTP layer), and the engine's own counters and
    gauges (copied from its stats when rendered)."""

    content_type = CONTENT_TYPE

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = r.counter(
            "scratchlm_requests_total",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
        )
        self.ttft = r.histogram(
            "scratchlm_time_to_first_token_seconds",
            "Seconds from submitting a generation to its first token.",
            TTFT_BUCKETS,
        )
        self.itl = r.histogram(
            "scratchlm_inter_token_latency_seconds",
            "Seconds between two tokens of one generation.",
            ITL_BUCKETS,
        )
        self.prompt_tokens = r.counter(
            "scratchlm_prompt_tokens_total", "Prompt tokens admitted by the engine."
        )
        self.generated_tokens = r.counter(
            "scratchlm_generated_tokens_total", "Tokens sampled by the engine."
        )
        self.finished = r.counter(
            "scratchlm_generations_finished_total",
            "Generations ended, by reason (stop, length, cancelled, error).",
            ["reason"],
        )
        self.running = r.gauge("scratchlm_requests_running", "Generations prefilling or decoding.")
        self.waiting = r.gauge("scratchlm_requests_waiting", "Generations queued for a slot.")
        self.batch_size = r.gauge("scratchlm_batch_size", "Rows in the engine's last decode step.")
        self.max_batch = r.gauge("scratchlm_max_batch", "Slots: generations run at once at most.")
        self.max_queue = r.gauge("scratchlm_max_queue", "Generations that may wait at most.")

    def request_done(self, path: str, status: int) -> None:
        route = path if path in ROUTES else "/static" if path.startswith("/static/") else "other"
        if path.startswith("/v1/models/"):
            route = "/v1/models/{model}"
        self.requests.inc(route=route, status=str(status))

    def token_seen(self, index: int, since_last: float | None, since_start: float) -> None:
        """One generated token of a request's choice ``index`` (serve.transport)."""
        if since_last is None:
            self.ttft.observe(since_start)
        else:
            self.itl.observe(since_last)

    def render(self, stats: EngineStats) -> str:
        self.prompt_tokens.set(stats.prompt_tokens_total)
        self.generated_tokens.set(stats.generated_tokens_total)
        for reason, count in stats.requests_finished_total.items():
            self.finished.set(count, reason=reason)
        self.running.set(stats.running)
        self.waiting.set(stats.waiting)
        self.batch_size.set(stats.batch_size)
        self.max_batch.set(stats.max_batch)
        self.max_queue.set(stats.max_queue)
        return self.registry.render()
