"""Pytest fixtures (and the small servers behind them) for tests that need a real nginx, a real
Prometheus, HTTP backends to proxy to, or an exporter to scrape.

Import the fixtures into a ``conftest.py``::

    from autoscaler.testing.embedded_fixtures import (  # noqa: F401 - fixtures are found by name
        embedded_nginx, embedded_prometheus, start_exporter, start_http_backend,
    )

Fixtures (function-scoped; each stops what it started when the test ends):

- ``embedded_nginx``: a started ``EmbeddedNginx`` in ``tmp_path/nginx`` (empty upstream); build the
  balancer with ``NginxBalancer(embedded_nginx.balancer_config())``;
- ``embedded_prometheus``: a started ``EmbeddedPrometheus`` in ``tmp_path/prometheus`` scraping every
  second the targets of ``embedded_prometheus.targets_file`` (write it with
  ``metrics.file_sd.write_targets``; Prometheus applies a change within about 5 s);
- ``start_http_backend``: ``start(name) -> TinyBackend``, an HTTP server answering its name;
- ``start_exporter``: ``start() -> StaticExporter``, a Prometheus exporter of gauges the test sets.

``embedded_nginx`` and ``embedded_prometheus`` skip the test when the binary is not installed
(``scripts/install-system-packages.sh`` installs both); ``require_binary`` does the same for
fixtures of other scopes. ``wait_for_series`` polls Prometheus until a query returns data;
``backfill`` writes history into a (stopped) Prometheus's TSDB with ``promtool``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily

from autoscaler.domain import CloudState, Instance
from autoscaler.embedded import EmbeddedNginx, EmbeddedPrometheus
from autoscaler.embedded._process import LOOPBACK
from autoscaler.testing import wait_until

#: Longest sleep ``/slow`` accepts, so a typo cannot park a test.
MAX_SLOW_S = 30.0


# ------------------------------------------------------------------------------------ HTTP backend
class TinyBackend:
    """An HTTP server on 127.0.0.1 that answers with its own name, standing in for a node behind nginx.

    ``GET /`` (any path) answers ``200`` with ``name``; ``GET /slow?seconds=S`` answers the same
    after ``S`` seconds (at most ``MAX_SLOW_S``); ``/healthz`` answers ``ok``. ``hits`` counts the
    requests served.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self._lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/healthz":
                    self._reply(b"ok\n")
                    return
                with backend._lock:
                    backend.hits += 1
                if url.path == "/slow":
                    seconds = float(parse_qs(url.query).get("seconds", ["1"])[0])
                    time.sleep(min(max(seconds, 0.0), MAX_SLOW_S))
                self._reply(backend.name.encode())

            def _reply(self, body: bytes) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # keep test output clean

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"backend-{name}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


# ---------------------------------------------------------------------------------------- exporter
class StaticExporter:
    """A Prometheus exporter on 127.0.0.1 serving gauges a test sets (prometheus_client underneath).

    ``set("asr_active_streams", 4, {"gpu": "0"})`` exposes that sample; ``timestamp`` (unix
    seconds) exposes it with an explicit sample time, which Prometheus stores as given (the way to
    make a stale sample). ``remove(name)`` stops exposing a gauge.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gauges: dict[str, dict[tuple[tuple[str, str], ...], tuple[float, float | None]]] = {}
        registry = CollectorRegistry()
        registry.register(self._Collector(self))
        self._server, self._thread = start_http_server(0, LOOPBACK, registry)
        self.port: int = self._server.server_port

    class _Collector:
        def __init__(self, exporter: StaticExporter) -> None:
            self._exporter = exporter

        def collect(self) -> Iterator[GaugeMetricFamily]:
            with self._exporter._lock:
                snapshot = {name: dict(samples) for name, samples in self._exporter._gauges.items()}
            for name, samples in snapshot.items():
                label_names = sorted({k for labels in samples for k, _ in labels})
                family = GaugeMetricFamily(name, f"{name} set by a test", labels=label_names)
                for labels, (value, stamp) in samples.items():
                    as_dict = dict(labels)
                    family.add_metric([as_dict.get(k, "") for k in label_names], value, timestamp=stamp)
                yield family

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (metrics at ``/metrics``)."""
        return f"http://{LOOPBACK}:{self.port}"

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None,
            timestamp: float | None = None) -> None:
        """Expose ``name{labels} value`` (with an explicit sample time when ``timestamp`` is given)."""
        key = tuple(sorted((labels or {}).items()))
        with self._lock:
            self._gauges.setdefault(name, {})[key] = (float(value), timestamp)

    def remove(self, name: str) -> None:
        """Stop exposing every sample of ``name``."""
        with self._lock:
            self._gauges.pop(name, None)

    def instance(self, instance_id: str, *, pool: str = "asr-test", instance_type: str = "exporter",
                 model_version: str = "test-model") -> Instance:
        """A running ``Instance`` at this exporter's address, for ``metrics.file_sd.write_targets``."""
        return Instance(
            id=instance_id, pool=pool, instance_type=instance_type, model_version=model_version,
            launch_token="test", launched_at=datetime.now(UTC), state=CloudState.RUNNING,
            address=LOOPBACK, port=self.port,
        )

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def wait_for_series(prometheus_url: str, promql: str, *, timeout_s: float = 15.0,
                    predicate: Callable[[list[dict[str, Any]]], bool] = bool) -> list[dict[str, Any]]:
    """Poll Prometheus until ``promql``'s instant result satisfies ``predicate`` (default: non-empty).

    Returns the result's series; raises ``AssertionError`` after ``timeout_s``.
    """
    def probe() -> list[dict[str, Any]] | None:
        try:
            response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=2.0)
            result: list[dict[str, Any]] = response.json()["data"]["result"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        return result if predicate(result) else None

    found = wait_until(probe, timeout_s=timeout_s, interval_s=0.2, message=f"Prometheus answers {promql!r}")
    assert found is not None  # wait_until only returns a truthy value
    return found


def backfill(openmetrics: str, data_dir: Path) -> None:
    """Create TSDB blocks in ``data_dir`` from OpenMetrics text with ``promtool`` (as an operator would).

    Run it before Prometheus starts on ``data_dir``; skips the test when ``promtool`` is missing.
    """
    require_binary("promtool")
    source = data_dir.parent / "history.om"
    source.write_text(openmetrics, encoding="utf-8")
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(data_dir)],
        check=True,
        capture_output=True,
        timeout=120,
    )


# ---------------------------------------------------------------------------------------- fixtures
def require_binary(binary: str) -> None:
    """Skip the calling test when ``binary`` is not on PATH."""
    if shutil.which(binary) is None:
        message = f"{binary} is not installed (run scripts/install-system-packages.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a skip there would hide a broken set-up
        pytest.skip(message)


@pytest.fixture
def embedded_nginx(tmp_path: Path) -> Iterator[EmbeddedNginx]:
    """A started nginx in ``tmp_path/nginx`` with an empty ``fun_asr_backend`` upstream."""
    require_binary("nginx")
    with EmbeddedNginx(tmp_path / "nginx") as nginx:
        yield nginx


@pytest.fixture
def embedded_prometheus(tmp_path: Path) -> Iterator[EmbeddedPrometheus]:
    """A started Prometheus in ``tmp_path/prometheus`` scraping its (empty) file_sd targets every second."""
    require_binary("prometheus")
    with EmbeddedPrometheus(tmp_path / "prometheus", scrape_interval_s=1.0) as prometheus:
        yield prometheus


@pytest.fixture
def start_http_backend() -> Iterator[Callable[[str], TinyBackend]]:
    """Start ``TinyBackend``s by name; all are stopped after the test."""
    started: list[TinyBackend] = []

    def start(name: str) -> TinyBackend:
        backend = TinyBackend(name)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture
def start_exporter() -> Iterator[Callable[[], StaticExporter]]:
    """Start ``StaticExporter``s; all are stopped after the test."""
    started: list[StaticExporter] = []

    def start() -> StaticExporter:
        exporter = StaticExporter()
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.stop()
