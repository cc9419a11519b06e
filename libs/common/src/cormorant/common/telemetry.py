"""Prometheus metrics on a registry per app, OpenTelemetry tracing, structured logs."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from starlette.responses import Response

# Paths never measured nor traced: probes and scrapes would drown real traffic.
UNMEASURED_PATHS = frozenset({"/healthz", "/metrics", "/v2/health/ready", "/v2/health/live"})


def new_registry() -> CollectorRegistry:
    """A fresh registry for one app, so apps (and tests) never share global state.

    It carries the process collector (CPU, memory, open files), which the replica dashboards
    chart per process.
    """
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry


def metrics_response(registry: CollectorRegistry) -> Response:
    """The Prometheus text exposition of ``registry``."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def setup_tracing(service_name: str, otlp_endpoint: str | None) -> TracerProvider:
    """Install a tracer provider for ``service_name``; export over OTLP/HTTP when configured."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def inject_context(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write the current trace context (W3C ``traceparent``) into HTTP or NATS headers."""
    inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, str]) -> otel_context.Context:
    """The trace context carried by incoming HTTP or NATS headers."""
    return extract(dict(carrier))


def current_trace_id() -> str | None:
    """Hex trace id of the active span, if any."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with trace id and any ``extra`` fields."""

    _RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message",
        "asctime",
    }

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = current_trace_id()
        if trace_id:
            out["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in self._RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Send the process's logs to stderr, as JSON lines or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
