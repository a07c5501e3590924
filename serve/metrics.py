"""Prometheus metrics of the endpoint (``GET /metrics``), one registry per ingress replica."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGES = ("decode", "encode", "search", "rerank", "total")
COUNTED = ("metrics", "info", "search", "gallery_image", "gallery_add", "gallery_remove", "explain", "admin_reload")


class EndpointMetrics:
    """Requests by endpoint and status, latency per stage, encoder batch sizes, gallery size."""

    counted = frozenset(COUNTED)  # the routes whose answers are counted, by route name

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sbir_requests",
            "Requests answered, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sbir_stage_seconds",
            "Seconds spent per stage of a search",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sbir_encoder_batch_size",
            "Images the encoder encoded together with each request's",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.rerank_batch = Histogram(
            "sbir_rerank_batch_queries",
            "Queries whose re-rank pairs went through the relation head together with each re-ranking request's",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.gallery_size = Gauge("sbir_gallery_size", "Photos in the served gallery", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
