"""The Prometheus text format written by serve.metrics, checked line by line."""

from __future__ import annotations

import threading

from scratchlm.serve.metrics import Registry, parse_samples


def test_counters_gauges_and_labels_render_in_the_text_format():
    registry = Registry()
    requests = registry.counter("app_requests_total", "Requests.", ["route", "status"])
    queue = registry.gauge("app_queue", "Waiting requests.")
    requests.inc(route="/v1/models", status="200")
    requests.inc(2, route="/v1/models", status="200")
    requests.inc(route='/a"b\\c\nd', status="404")
    queue.set(3)
    assert registry.render() == (
        "# HELP app_requests_total Requests.\n"
        "# TYPE app_requests_total counter\n"
        'app_requests_total{route="/a\\"b\\\\c\\nd",status="404"} 1\n'
        'app_requests_total{route="/v1/models",status="200"} 3\n'
        "# HELP app_queue Waiting requests.\n"
        "# TYPE app_queue gauge\n"
        "app_queue 3\n"
    )
    assert requests.value(route="/v1/models", status="200") == 3


def test_an_unlabelled_metric_shows_zero_before_any_update():
    registry = Registry()
    registry.counter("c_total", "C.")
    registry.counter("d_total", "D.", ["kind"])
    assert registry.render().splitlines() == [
        "# HELP c_total C.",
        "# TYPE c_total counter",
        "c_total 0",
        "# HELP d_total D.",
        "# TYPE d_total counter",
    ]


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    registry = Registry()
    latency = registry.histogram("lat_seconds", "Latency.", [0.1, 0.5, 1])
    for value in (0.25, 0.1, 0.5, 2.0, 0.75):
        latency.observe(value)
    lines = registry.render().splitlines()
    assert lines == [
        "# HELP lat_seconds Latency.",
        "# TYPE lat_seconds histogram",
        'lat_seconds_bucket{le="0.1"} 1',  # le: less than or equal
        'lat_seconds_bucket{le="0.5"} 3',
        'lat_seconds_bucket{le="1"} 4',
        'lat_seconds_bucket{le="+Inf"} 5',
        "lat_seconds_sum 3.6",
        "lat_seconds_count 5",
    ]
    assert latency.count == 5


def test_updates_from_many_threads_are_all_counted():
    registry = Registry()
    counter = registry.counter("n_total", "N.")
    histogram = registry.histogram("h", "H.", [1.0])

    def work():
        for _ in range(1000):
            counter.inc()
            histogram.observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    samples = parse_samples(registry.render())
    assert samples["n_total"] == 4000
    assert samples['h_bucket{le="1"}'] == 4000 and samples["h_count"] == 4000


def test_floats_render_exactly():
    registry = Registry()
    gauge = registry.gauge("g", "G.")
    gauge.set(0.1 + 0.2)
    assert parse_samples(registry.render())["g"] == 0.1 + 0.2
