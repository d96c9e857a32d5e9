"""Prometheus metrics of one app instance (its own registry, so tests can run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)
SEQUENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ovembed_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "ovembed_request_duration_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("ovembed_queue_texts", "texts waiting for the batcher", ["model"], registry=r)
        self.queue_high_water = Gauge("ovembed_queue_texts_high_water", "most texts ever queued at once", ["model"],
                                      registry=r)
        self.queue_limit = Gauge("ovembed_queue_limit_texts", "queued texts past which requests get 503", ["model"],
                                 registry=r)
        self.batch_sequences = Histogram(
            "ovembed_batch_sequences", "texts per merged engine call", ["model"], buckets=SEQUENCE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "ovembed_batch_tokens", "tokens per merged engine call", ["model"], buckets=TOKEN_BUCKETS, registry=r
        )
        self.tokens = Counter("ovembed_tokens_embedded", "tokens embedded", ["model"], registry=r)
        self.load_seconds = Gauge("ovembed_model_load_seconds", "time to load a model", ["model"], registry=r)
        self.overloaded = Counter("ovembed_overloaded", "requests refused with 503 (queue full)", ["model"], registry=r)

    def watch_queue(self, model: str, batcher) -> None:
        """Read the batcher's queue at every scrape: depth, high-water mark and bound."""
        self.queue_depth.labels(model).set_function(lambda: batcher.pending_texts)
        self.queue_high_water.labels(model).set_function(lambda: batcher.high_water)
        self.queue_limit.labels(model).set(batcher.max_queue_texts)

    def dispatch_recorder(self, model: str):
        def record(sequences: int, tokens: int) -> None:
            self.batch_sequences.labels(model).observe(sequences)
            self.batch_tokens.labels(model).observe(tokens)
            self.tokens.labels(model).inc(tokens)

        return record
