"""Fixtures for the fault and hostile-input tests: real nginx, real Prometheus, tiny backends."""

from __future__ import annotations

from autoscaler.testing.embedded_fixtures import (  # noqa: F401 - pytest finds fixtures by name
    embedded_nginx,
    embedded_prometheus,
    start_exporter,
    start_http_backend,
)
