"""Prometheus metrics, one registry per app (several apps in one process stay independent)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Metrics:
    registry: object
    requests: object
    latency: object
    batch_size: object
    queue_depth: object

    @classmethod
    def create(cls) -> Metrics:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        reg = CollectorRegistry()
        return cls(
            reg,
            Counter("segensemble_requests_total", "POST /segment requests by HTTP status", ["status"], registry=reg),
            Histogram("segensemble_request_seconds", "POST /segment latency", registry=reg,
                      buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
            Histogram("segensemble_batch_size", "images per engine call", registry=reg, buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32)),
            Gauge("segensemble_queue_depth", "requests waiting for the engine", registry=reg),
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
