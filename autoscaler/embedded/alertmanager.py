"""A real Alertmanager (Debian's ``prometheus-alertmanager``) run as a plain child process, for tests.

Usage::

    with EmbeddedAlertmanager(tmp_path / "am", webhook_url="http://127.0.0.1:8000/hook") as am:
        ...  # point Prometheus's `alerting.alertmanagers` at am.address

The folder holds ``alertmanager.yml`` (rendered from ``infra/alertmanager/alertmanager.yml.template``),
``data/`` and ``alertmanager.log``. It listens on a free 127.0.0.1 port, with clustering off.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from autoscaler.embedded._process import (
    INFRA_DIR,
    LOOPBACK,
    ChildProcess,
    EmbeddedProcessError,
    free_port,
    render_template,
)

ALERTMANAGER_TEMPLATE = INFRA_DIR / "alertmanager" / "alertmanager.yml.template"
#: Debian names the binary after its package; upstream's is `alertmanager`.
BINARIES = ("prometheus-alertmanager", "alertmanager")


def alertmanager_binary() -> str | None:
    """The Alertmanager binary on PATH, if any."""
    return next((b for b in BINARIES if shutil.which(b)), None)


class EmbeddedAlertmanager:
    """One Alertmanager on ``http://127.0.0.1:<port>`` sending every alert to ``webhook_url``."""

    def __init__(
        self,
        root: Path,
        *,
        webhook_url: str,
        group_wait_s: int = 1,
        group_interval_s: int = 1,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.root = root.resolve()
        self.webhook_url = webhook_url
        self.group_wait_s = group_wait_s
        self.group_interval_s = group_interval_s
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self._process: ChildProcess | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, for Prometheus's ``alertmanagers`` targets."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.address}"

    def start(self) -> Self:
        """Write the configuration, start Alertmanager and wait for ``/-/ready``."""
        binary = alertmanager_binary()
        if binary is None:
            raise EmbeddedProcessError("alertmanager is not installed (scripts/install-system-packages.sh)")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "alertmanager.yml"
        config.write_text(
            render_template(
                ALERTMANAGER_TEMPLATE,
                {
                    "webhook_url": json.dumps(self.webhook_url),
                    "group_wait": f"{self.group_wait_s}s",
                    "group_interval": f"{self.group_interval_s}s",
                },
            ),
            encoding="utf-8",
        )
        self.port = free_port()
        process = ChildProcess(
            [binary, f"--config.file={config}", f"--storage.path={self.root / 'data'}",
             f"--web.listen-address={self.address}", "--cluster.listen-address=", "--log.level=info"],
            cwd=self.root, log_path=self.root / "alertmanager.log",
        )
        process.start()
        self._process = process
        try:
            process.wait_ready(self._ready, timeout_s=self.start_timeout_s, what="alertmanager")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def alerts(self) -> list[dict[str, object]]:
        """The alerts Alertmanager holds (``/api/v2/alerts``)."""
        response = httpx.get(f"{self.url}/api/v2/alerts", timeout=5.0)
        response.raise_for_status()
        alerts: list[dict[str, object]] = response.json()
        return alerts

    def stop(self) -> None:
        """Stop Alertmanager (SIGTERM, then SIGKILL)."""
        if self._process is not None:
            self._process.stop(timeout_s=10.0, sig=signal.SIGTERM)
            self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
