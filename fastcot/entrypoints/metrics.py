"""Prometheus metrics of `fastcot serve` (prometheus_client, text format at `/metrics`).

Names follow vLLM's with the `fastcot:` prefix. Engine state (running and waiting requests, KV
cache usage, prefix-cache counters) is read at scrape time from the snapshot the engine thread
publishes after every step, never from the engine itself (it belongs to its thread). Token
counters and latency histograms are updated by the engine thread as outputs come out.
`kv_cache_usage_perc` is a fraction in [0, 1], as vLLM's is.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. TTFT covers queueing and prefill; ITL one decode step; e2e whole requests.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
               0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)

# (metric name, attribute of the engine's `stats()` snapshot (`EngineStats`), help).
_GAUGES = (
    ("fastcot:num_requests_running", "num_running_requests", "Requests whose sequences are being generated."),
    ("fastcot:num_requests_waiting", "num_waiting_requests", "Requests waiting to be scheduled."),
    ("fastcot:kv_cache_usage_perc", "kv_cache_usage", "Fraction of KV-cache blocks in use (0 to 1)."),
)
_COUNTERS = (
    ("fastcot:prefix_cache_queries", "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."),
    ("fastcot:prefix_cache_hits", "prefix_cache_hits", "Prompt tokens found in the prefix cache."),
)


class _EngineCollector(Collector):
    def __init__(self, snapshot: Callable[[], object]):
        self._snapshot = snapshot

    def collect(self):
        stats = self._snapshot()
        for name, key, text in _GAUGES:
            family = GaugeMetricFamily(name, text)
            family.add_metric([], float(getattr(stats, key, 0)))
            yield family
        for name, key, text in _COUNTERS:
            family = CounterMetricFamily(name, text)
            family.add_metric([], float(getattr(stats, key, 0)))
            yield family


class ServerMetrics:
    """One server's metrics in their own registry (several servers may live in one process)."""

    def __init__(self, engine_stats: Callable[[], object]):
        self.registry = CollectorRegistry()
        reg = self.registry
        self.prompt_tokens = Counter("fastcot:prompt_tokens", "Prompt tokens of accepted requests.", registry=reg)
        self.generation_tokens = Counter("fastcot:generation_tokens", "Generated tokens.", registry=reg)
        self.reasoning_tokens = Counter("fastcot:reasoning_tokens", "Generated tokens inside thinking sections.",
                                        registry=reg)
        self.time_to_first_token = Histogram("fastcot:time_to_first_token_seconds",
                                             "From a request's arrival to its first token.", buckets=TTFT_BUCKETS,
                                             registry=reg)
        self.inter_token_latency = Histogram("fastcot:inter_token_latency_seconds",
                                             "Between consecutive outputs of a request.", buckets=ITL_BUCKETS,
                                             registry=reg)
        self.e2e_request_latency = Histogram("fastcot:e2e_request_latency_seconds",
                                             "From a request's arrival to its last token.", buckets=E2E_BUCKETS,
                                             registry=reg)
        reg.register(_EngineCollector(engine_stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)
