"""Prometheus metrics of every module, in one registry per process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

WORKER_SLOTS = Gauge("llmos_worker_slots", "Slots a worker has", ["deployment", "worker"],
                     registry=REGISTRY)
WORKER_BUSY_SLOTS = Gauge("llmos_worker_busy_slots", "Slots generating now",
                          ["deployment", "worker"], registry=REGISTRY)
WORKER_REQUESTS = Counter("llmos_worker_requests", "Requests a worker finished",
                          ["deployment", "outcome"], registry=REGISTRY)
GENERATED_TOKENS = Counter("llmos_generated_tokens", "Completion tokens generated",
                           ["deployment"], registry=REGISTRY)
GATEWAY_REQUESTS = Counter("llmos_gateway_requests", "Inference requests at the gateway",
                           ["endpoint", "status"], registry=REGISTRY)
GATEWAY_LATENCY = Histogram("llmos_gateway_request_seconds", "End-to-end request time",
                            ["endpoint"], registry=REGISTRY)
