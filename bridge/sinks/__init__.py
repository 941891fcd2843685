"""Sinks: where durable events go. Broker sinks are imported lazily by ``bridge.sinks.build``."""
