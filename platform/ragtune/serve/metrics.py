"""What ``GET /metrics`` answers: ragtune's serving metrics in Prometheus' text format, recorded by
the Ingress replica that handles each request (its own registry, so that two applications in one
process never share counts).

The Ingress sees every request whole: its route, mode, model and status, how long it took, and what
the Retriever (embed and search times) and the Generator (tokens, time to the first piece, its
replica's adapter loads and evictions) report back with their results.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds: a query embedding takes milliseconds, an answer on a CPU tens of seconds
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _AdapterCounts:
    """Adapter loads and evictions as counters: the sum, over the Generator replicas this Ingress has
    heard from, of the cumulative counts each reported with its last answer."""

    def __init__(self):
        self.by_replica: dict[str, tuple[int, int]] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        loads = CounterMetricFamily("ragtune_adapter_loads", "LoRA adapters loaded into a Generator replica's slots")
        evictions = CounterMetricFamily("ragtune_adapter_evictions",
                                        "LoRA adapters unloaded from a Generator replica (least recently used)")
        loads.add_metric([], sum(n for n, _ in self.by_replica.values()))
        evictions.add_metric([], sum(n for _, n in self.by_replica.values()))
        yield loads
        yield evictions


class ServingMetrics:
    """The metric families, each documented by its help text."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ragtune_requests", "HTTP requests answered, by route, mode, model and status",
                                ["route", "mode", "model", "status"], registry=r)
        self.request_seconds = Histogram("ragtune_request_seconds", "Whole request, first byte of a stream",
                                         ["route", "mode"], buckets=_BUCKETS, registry=r)
        self.embed_seconds = Histogram("ragtune_embed_seconds", "Query embedding in the Embedder, as the "
                                       "Retriever waited for it", buckets=_BUCKETS, registry=r)
        self.retrieve_seconds = Histogram("ragtune_retrieve_seconds", "Milvus search in the Retriever",
                                          buckets=_BUCKETS, registry=r)
        self.generate_seconds = Histogram("ragtune_generate_seconds", "Generation, as the Ingress waited for it "
                                          "(queueing included)", ["mode"], buckets=_BUCKETS, registry=r)
        self.first_token_seconds = Histogram("ragtune_time_to_first_token_seconds", "Streams: request start to "
                                             "the first generated piece", ["mode"], buckets=_BUCKETS, registry=r)
        self.prompt_tokens = Counter("ragtune_prompt_tokens", "Prompt tokens (retrieved passages included)",
                                     ["mode", "model"], registry=r)
        self.completion_tokens = Counter("ragtune_completion_tokens", "Generated tokens", ["mode", "model"],
                                         registry=r)
        self.overloaded = Counter("ragtune_overloaded", "Requests refused with 503 because a deployment's queue "
                                  "was full", registry=r)
        self.in_flight = Gauge("ragtune_requests_in_flight", "Requests this Ingress replica is answering or "
                               "queueing", registry=r)
        self.adapters = _AdapterCounts()
        r.register(self.adapters)

    def answered(self, route: str, mode: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(route, mode, model, str(status)).inc()
        self.request_seconds.labels(route, mode).observe(seconds)

    def generated(self, mode: str, model: str, done: dict, seconds: float | None) -> None:
        """A Generator result: its tokens, its replica's adapter counts, and (whole answers) the wait."""
        self.prompt_tokens.labels(mode, model).inc(done["prompt_tokens"])
        self.completion_tokens.labels(mode, model).inc(done["completion_tokens"])
        if seconds is not None:
            self.generate_seconds.labels(mode).observe(seconds)
        if "adapters" in done:
            a = done["adapters"]
            self.adapters.by_replica[a["replica"]] = (a["loads"], a["evictions"])

    def retrieved(self, timings: dict[str, float]) -> None:
        if timings.get("embed_s") is not None:
            self.embed_seconds.observe(timings["embed_s"])
        self.retrieve_seconds.observe(timings["search_s"])

    def text(self) -> bytes:
        return generate_latest(self.registry)
