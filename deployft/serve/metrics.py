"""Prometheus metrics of one app, in a registry of its own (several apps can live in one process)."""

from __future__ import annotations

import time

from ..errors import require

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Requests by route and status, latency, queue depth, batch sizes, tokens generated, time to first token."""

    def __init__(self) -> None:
        prometheus = require("prometheus_client", "serve")
        self.prometheus = prometheus
        self.registry = prometheus.CollectorRegistry()
        kw = {"registry": self.registry}
        self.requests = prometheus.Counter("deployft_requests_total", "HTTP requests answered, by route and status",
                                           ["route", "status"], **kw)
        self.latency = prometheus.Histogram("deployft_request_seconds", "Time from request to the last byte sent",
                                            ["route"], buckets=LATENCY_BUCKETS, **kw)
        self.queued = prometheus.Gauge("deployft_queue_depth", "Requests waiting for the model", **kw)
        self.running = prometheus.Gauge("deployft_running_sequences", "Sequences in the running generation batch",
                                        **kw)
        self.batches = prometheus.Histogram("deployft_batch_size", "Rows per ONNX Runtime call",
                                            ["kind"], buckets=BATCH_BUCKETS, **kw)
        self.tokens = prometheus.Counter("deployft_generated_tokens_total", "Tokens generated", **kw)
        self.ttft = prometheus.Histogram("deployft_time_to_first_token_seconds",
                                         "Time from request to its first generated text", buckets=LATENCY_BUCKETS, **kw)
        self.finished = prometheus.Counter("deployft_generations_total", "Generations ended, by finish reason",
                                           ["reason"], **kw)
        self.prefix_hits = prometheus.Counter("deployft_prefix_cache_hits_total",
                                              "Prompts prefilled from a cached prefix", **kw)
        self.prefix_tokens = prometheus.Counter("deployft_prefix_cache_tokens_total",
                                                "Prompt tokens taken from the prefix cache instead of computed", **kw)
        self.rejected = prometheus.Counter("deployft_rejected_total", "Requests refused because the queue was full",
                                           **kw)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def queue(self, waiting: int, running: int) -> None:
        self.queued.set(waiting)
        self.running.set(running)

    def generation_step(self, rows: int, tokens: int) -> None:
        """One decoder call over `rows` sequences (0: no call to count) that generated `tokens` tokens."""
        if rows:
            self.batches.labels("generate").observe(rows)
        self.tokens.inc(tokens)

    def prefix_reused(self, tokens: int) -> None:
        """A prompt resumed from a cached prefix of `tokens` tokens."""
        self.prefix_hits.inc()
        self.prefix_tokens.inc(tokens)

    def generation_end(self, reason: str) -> None:
        self.finished.labels(reason).inc()

    def classify_batch(self, rows: int) -> None:
        self.batches.labels("classify").observe(rows)

    def first_token(self, started: float) -> None:
        self.ttft.observe(time.perf_counter() - started)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self.prometheus.generate_latest(self.registry), self.prometheus.CONTENT_TYPE_LATEST
