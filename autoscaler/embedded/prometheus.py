"""A real Prometheus run as a plain child process from a private folder, for the demo and end-to-end tests.

Usage::

    with EmbeddedPrometheus(tmp_path / "prom", scrape_interval_s=1) as prom:
        write_targets(prom.targets_file, instances)       # autoscaler.metrics.file_sd
        source = PrometheusSource(prom.source_config())
        source.query("max(fun_asr_active_streams)", now=...)

The folder holds ``prometheus.yml`` (rendered from ``infra/prometheus/prometheus.yml.template``),
the file_sd target file (``targets.json``, first written empty), ``data/`` (the TSDB) and
``prometheus.log``. Prometheus listens on a free 127.0.0.1 port with ``--web.enable-lifecycle``,
so ``reload()`` applies an edited configuration.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from autoscaler.embedded._process import (
    INFRA_DIR,
    LOOPBACK,
    ChildProcess,
    EmbeddedProcessError,
    free_port,
    render_template,
)
from autoscaler.metrics.file_sd import write_targets
from autoscaler.policy.model import PrometheusConfig

PROMETHEUS_TEMPLATE = INFRA_DIR / "prometheus" / "prometheus.yml.template"
_START_ATTEMPTS = 3


def _seconds(value: float) -> str:
    # Prometheus durations take integer units only ("1500ms", not "1.5s").
    return f"{round(value * 1000)}ms"


class EmbeddedPrometheus:
    """One Prometheus server on ``http://127.0.0.1:<port>`` scraping the targets in ``targets_file``.

    ``root`` is the private folder (a new temporary folder, removed on ``stop``, when omitted).
    ``scrape_interval_s`` is short by default (2 s) so demos and tests see changes quickly; the
    scrape timeout is the smaller of the interval and 10 s. ``start`` waits up to
    ``start_timeout_s`` for ``/-/ready``; ``stop`` waits up to ``stop_timeout_s`` before killing.
    ``retention`` is the TSDB's time retention (a Prometheus duration; longer for backfilled history).
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        scrape_interval_s: float = 2.0,
        job_name: str = "asr-nodes",
        binary: str = "prometheus",
        template: Path = PROMETHEUS_TEMPLATE,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        retention: str = "1d",
    ) -> None:
        if scrape_interval_s <= 0:
            raise ValueError("scrape_interval_s must be positive")
        self._owns_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="embedded-prometheus-")).resolve()
        self.scrape_interval_s = scrape_interval_s
        self.job_name = job_name
        self.binary = binary
        self.template = template
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.retention = retention
        self.port = 0
        self._process: ChildProcess | None = None

    # ---------------------------------------------------------------------------------- paths/urls
    @property
    def config_file(self) -> Path:
        """The rendered ``prometheus.yml``."""
        return self.root / "prometheus.yml"

    @property
    def targets_file(self) -> Path:
        """The file_sd target file Prometheus watches; write it with ``metrics.file_sd.write_targets``."""
        return self.root / "targets.json"

    @property
    def data_dir(self) -> Path:
        """The TSDB folder (``--storage.tsdb.path``)."""
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        """Prometheus's own log."""
        return self.root / "prometheus.log"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, once started."""
        if not self.port:
            raise EmbeddedProcessError("prometheus is not started")
        return f"http://{LOOPBACK}:{self.port}"

    def source_config(self, **overrides: Any) -> PrometheusConfig:
        """A ``PrometheusConfig`` for this server (its URL and target file), with ``overrides``."""
        settings: dict[str, Any] = {"url": self.url, "file_sd_path": str(self.targets_file)}
        return PrometheusConfig(**(settings | overrides))

    # ----------------------------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        """Render the config, write an empty target file, start Prometheus and wait for ``/-/ready``.

        Raises ``EmbeddedProcessError`` (with Prometheus's log) when it does not come up; nothing
        is left running and an owned folder is removed.
        """
        if self._process is not None:
            raise EmbeddedProcessError("prometheus is already started")
        if shutil.which(self.binary) is None:
            raise EmbeddedProcessError(f"prometheus binary {self.binary!r} not found on PATH")
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            write_targets(self.targets_file, [])
        self.config_file.write_text(self.render_config(), encoding="utf-8")
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.port = free_port()
            process = ChildProcess(
                [self.binary, f"--config.file={self.config_file}", f"--storage.tsdb.path={self.data_dir}",
                 f"--web.listen-address={LOOPBACK}:{self.port}", "--web.enable-lifecycle",
                 f"--storage.tsdb.retention.time={self.retention}", "--log.level=info"],
                cwd=self.root, log_path=self.log_file,
            )
            process.start()
            try:
                process.wait_ready(self._ready, timeout_s=self.start_timeout_s, what="prometheus")
            except EmbeddedProcessError:
                process.stop(timeout_s=self.stop_timeout_s)
                if attempt == _START_ATTEMPTS or "address already in use" not in process.log_tail().lower():
                    raise
                continue
            self._process = process
            return self
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def stop(self) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL after ``stop_timeout_s``); remove an owned folder."""
        if self._process is not None:
            self._process.stop(timeout_s=self.stop_timeout_s, sig=signal.SIGTERM)
            self._process = None
        self.port = 0
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        """True while the Prometheus process is alive."""
        return self._process is not None and self._process.running()

    def reload(self) -> None:
        """Re-read ``config_file`` (``POST /-/reload``); ``EmbeddedProcessError`` if Prometheus refuses it."""
        try:
            response = httpx.post(f"{self.url}/-/reload", timeout=10.0)
        except httpx.HTTPError as exc:
            raise EmbeddedProcessError(f"prometheus reload failed: {exc}") from exc
        if response.status_code != 200:
            raise EmbeddedProcessError(f"prometheus refused the reload: {response.text.strip()}")

    def active_targets(self) -> list[dict[str, Any]]:
        """The active targets Prometheus reports (``/api/v1/targets``): labels, health, last error."""
        response = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=5.0)
        response.raise_for_status()
        targets: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return targets

    def render_config(self) -> str:
        """The ``prometheus.yml`` text for this server's settings."""
        interval = self.scrape_interval_s
        return render_template(self.template, {
            # JSON strings are YAML strings: quoting survives any path or job name.
            "job_name": json.dumps(self.job_name),
            "targets_file": json.dumps(str(self.targets_file)),
            "scrape_interval": _seconds(interval),
            "scrape_timeout": _seconds(min(interval, 10.0)),
            "refresh_interval": _seconds(max(interval, 1.0)),
        })

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ internals
    def _ready(self) -> bool:
        try:
            response = httpx.get(f"http://{LOOPBACK}:{self.port}/-/ready", timeout=1.0, trust_env=False)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def __repr__(self) -> str:
        return f"EmbeddedPrometheus(root={str(self.root)!r}, port={self.port})"

