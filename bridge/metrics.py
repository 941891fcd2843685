"""Every Prometheus metric of the bridge, created on a registry the caller owns."""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from bridge import __version__

# The *_created series double the exposition for no use on dashboards or alerts.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Publishing is an fsync or a broker round trip: from sub-millisecond to seconds when a broker
# is failing over.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The bridge's metrics; one instance per registry (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_received = Counter(
            "login_audit_events_received_total",
            "Login events accepted from a source and normalized, before publishing.",
            ["source", "status"],
            registry=r,
        )
        self.events_published = Counter(
            "login_audit_events_published_total",
            "Login events made durable by a sink (fsync'd or acknowledged by the broker).",
            ["sink", "status"],
            registry=r,
        )
        self.publish_errors = Counter(
            "login_audit_publish_errors_total",
            "Failed attempts to make an event durable, by sink and error reason.",
            ["sink", "reason"],
            registry=r,
        )
        self.requests_rejected = Counter(
            "login_audit_requests_rejected_total",
            "Hook requests answered with an error, by reason "
            "(malformed, invalid_field, too_large, media_type, unauthorized, overloaded, "
            "sink_unavailable, sink_rejected, not_found, method_not_allowed).",
            ["reason"],
            registry=r,
        )
        self.connections_closed = Counter(
            "login_audit_connections_closed_total",
            "Client connections the bridge closed itself, by reason (headers_too_large: 431, "
            "header_timeout and body_timeout: 408 or a silent close, invalid_http: 400).",
            ["reason"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "login_audit_publish_duration_seconds",
            "Time from an accepted event to its durability in the sink.",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "login_audit_requests_in_flight",
            "Hook events being made durable now (authenticated, body read, not yet answered).",
            registry=r,
        )
        self.spool_events = Gauge(
            "login_audit_spool_events",
            "Events waiting in a spool: 'hook' is the shim's directory, 'bridge' the bridge's own.",
            ["spool"],
            registry=r,
        )
        self.spool_oldest_age = Gauge(
            "login_audit_spool_oldest_age_seconds",
            "Age of the oldest event waiting in a spool (0 when empty).",
            ["spool"],
            registry=r,
        )
        self.spool_rejected = Counter(
            "login_audit_spool_rejected_total",
            "Spooled hook files that could not be parsed, moved aside to the spool's rejected/.",
            registry=r,
        )
        self.spool_dead_letters = Counter(
            "login_audit_spool_dead_letters_total",
            "Spooled events the sink refused for good, kept in the spool's dead_letters table.",
            registry=r,
        )
        self.build_info = Info(
            "login_audit_build",
            "Version of the bridge and of Python.",
            registry=r,
        )
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        for spool in ("hook", "bridge"):
            self.spool_events.labels(spool).set(0)
            self.spool_oldest_age.labels(spool).set(0)
