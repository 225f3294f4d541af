"""Direct questions to a node: is it healthy (``GET /healthz``), how many streams is it serving.

The controller asks the node itself, not Prometheus, when a wrong answer would cost a request:
a node joins the balancer only on its own 200, and a draining node is terminated only when it
reports zero active streams (a Prometheus sample can be one scrape interval old).
"""

from __future__ import annotations

import math

import httpx
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.domain import Instance

#: The node's gauge of transcriptions in progress (the node contract: see autoscaler/node).
ACTIVE_STREAMS_METRIC = "asr_active_streams"


class HttpNodeProbe:
    """``NodeProbe`` over HTTP with a short timeout; every failure is "not healthy" / "unknown"."""

    def __init__(self, *, health_path: str = "/healthz", timeout_s: float = 2.0) -> None:
        self.health_path = health_path
        self._client = httpx.Client(timeout=timeout_s)

    def healthy(self, instance: Instance) -> bool:
        """True only on a timely 200 from the node's health path."""
        if not instance.endpoint:
            return False
        try:
            return self._client.get(f"http://{instance.endpoint}{self.health_path}").status_code == 200
        except httpx.HTTPError:
            return False

    def active_streams(self, instance: Instance) -> float | None:
        """Streams in progress on the node (from its own ``/metrics``), or None when unknown."""
        if not instance.endpoint:
            return None
        try:
            response = self._client.get(f"http://{instance.endpoint}/metrics")
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        try:
            for family in text_string_to_metric_families(response.text):
                if family.name == ACTIVE_STREAMS_METRIC:
                    values = [s.value for s in family.samples if math.isfinite(s.value)]
                    return float(sum(values)) if values else None
        except ValueError:
            return None
        return None

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()
