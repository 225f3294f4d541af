"""A real nginx run as a plain child process from a private folder, for the demo and end-to-end tests.

Usage::

    with EmbeddedNginx(tmp_path / "nginx") as nginx:
        balancer = NginxBalancer(nginx.balancer_config())
        balancer.apply([...])
        httpx.get(nginx.url + "/api/predict/")

The folder holds everything nginx writes: ``nginx.conf`` (rendered from
``infra/nginx/nginx.conf.template``), the upstream file the balancer rewrites (``upstream.conf``,
first written with no backends), the pid file, ``logs/`` and ``temp/``. nginx listens on a free
127.0.0.1 port and runs in the foreground (``daemon off``, ``-e`` for the error log: nginx 1.19.5
or later) in a process group of its own, so stopping it also ends its workers.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from autoscaler.balancers.nginx import render_upstream
from autoscaler.embedded._process import (
    INFRA_DIR,
    LOOPBACK,
    ChildProcess,
    EmbeddedProcessError,
    free_port,
    render_template,
)
from autoscaler.files import atomic_write
from autoscaler.policy.model import NginxBalancerConfig

NGINX_TEMPLATE = INFRA_DIR / "nginx" / "nginx.conf.template"
#: How often a start is retried when the free port was taken between choosing and binding it.
_START_ATTEMPTS = 3


def _quoted(path: Path) -> str:
    text = str(path)
    if any(c in text for c in '"\\\n'):
        raise EmbeddedProcessError(f"path {text!r} cannot be written into an nginx config")
    return f'"{text}"'


class EmbeddedNginx:
    """One nginx master (and its worker) serving ``http://127.0.0.1:<port>``.

    ``root`` is the private folder (a new temporary folder, removed on ``stop``, when omitted).
    ``upstream`` and ``zone_size`` name the upstream block, as in ``NginxBalancerConfig``.
    ``start`` waits up to ``start_timeout_s`` for ``/healthz``; ``stop`` waits up to
    ``stop_timeout_s`` before killing.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        upstream: str = "fun_asr_backend",
        zone_size: str = "64k",
        binary: str = "nginx",
        template: Path = NGINX_TEMPLATE,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self._owns_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="embedded-nginx-")).resolve()
        self.upstream = upstream
        self.zone_size = zone_size
        self.binary = binary
        self.template = template
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.port = 0
        self._process: ChildProcess | None = None

    # ---------------------------------------------------------------------------------- paths/urls
    @property
    def conf_path(self) -> Path:
        """The main nginx.conf (``nginx -c``)."""
        return self.root / "nginx.conf"

    @property
    def upstream_file(self) -> Path:
        """The file holding the upstream block, included by ``conf_path``; the balancer rewrites it."""
        return self.root / "upstream.conf"

    @property
    def pid_file(self) -> Path:
        """Where the master writes its pid (read by ``nginx -s reload``)."""
        return self.root / "nginx.pid"

    @property
    def error_log(self) -> Path:
        """nginx's error log, at ``notice`` level (each reload logs a SIGHUP line)."""
        return self.root / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        """nginx's access log."""
        return self.root / "logs" / "access.log"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, once started."""
        if not self.port:
            raise EmbeddedProcessError("nginx is not started")
        return f"http://{LOOPBACK}:{self.port}"

    def balancer_config(self, **overrides: Any) -> NginxBalancerConfig:
        """An ``NginxBalancerConfig`` pointing at this nginx's prefix, config and upstream file."""
        settings: dict[str, Any] = {
            "upstream": self.upstream, "upstream_file": str(self.upstream_file),
            "nginx_conf": str(self.conf_path), "nginx_prefix": f"{self.root}/",
            "nginx_binary": self.binary, "zone_size": self.zone_size,
        }
        return NginxBalancerConfig(**(settings | overrides))

    def reload_count(self) -> int:
        """How many reloads (SIGHUP) the master has logged since this folder was created."""
        return self._log_count("signal 1 (SIGHUP) received")

    def wait_reloaded(self, reloads: int, *, timeout_s: float = 10.0) -> None:
        """Wait until ``reloads`` reloads are logged and each one's old worker stopped accepting.

        ``nginx -s reload`` returns once the signal is sent. The master then starts new workers
        and, about 100 ms later, tells the old ones to shut down gracefully (they finish what they
        hold but take no new connection); until then an old worker may still accept a connection
        with the previous upstream. Tests that send traffic right after an ``apply`` wait here.
        Raises ``EmbeddedProcessError`` after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while self.reload_count() < reloads or self._log_count("gracefully shutting down") < reloads:
            if time.monotonic() >= deadline:
                raise EmbeddedProcessError(
                    f"nginx did not finish {reloads} reload(s) within {timeout_s:.1f} s:\n"
                    f"{self._log_text()[-2000:]}"
                )
            time.sleep(0.02)

    def settled_reload_count(self, *, quiet_s: float = 0.3, timeout_s: float = 5.0) -> int:
        """``reload_count`` once it has not changed for ``quiet_s`` (at most ``timeout_s``).

        ``nginx -s reload`` returns when the signal is sent; the master logs it a moment later.
        """
        deadline = time.monotonic() + timeout_s
        count, since = self.reload_count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now_count = self.reload_count()
            if now_count != count:
                count, since = now_count, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
        return count

    # ----------------------------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        """Render the config, write an empty upstream, start nginx and wait for ``/healthz``.

        Raises ``EmbeddedProcessError`` (with nginx's log) when nginx does not come up; nothing is
        left running and an owned folder is removed.
        """
        if self._process is not None:
            raise EmbeddedProcessError("nginx is already started")
        if shutil.which(self.binary) is None:
            raise EmbeddedProcessError(f"nginx binary {self.binary!r} not found on PATH")
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Self:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        (self.root / "temp").mkdir(exist_ok=True)
        if not self.upstream_file.exists():
            atomic_write(self.upstream_file, render_upstream(self.upstream, self.zone_size, []))
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.port = free_port()
            self.conf_path.write_text(self._render(), encoding="utf-8")
            process = ChildProcess(
                [self.binary, "-p", f"{self.root}/", "-c", str(self.conf_path), "-e", str(self.error_log),
                 "-g", "daemon off;"],
                cwd=self.root, log_path=self.root / "logs" / "stdout.log",
            )
            process.start()
            try:
                process.wait_ready(self._healthy, timeout_s=self.start_timeout_s, what="nginx")
            except EmbeddedProcessError:
                process.stop(timeout_s=self.stop_timeout_s)
                if attempt == _START_ATTEMPTS or "Address already in use" not in self._log_text():
                    raise
                continue
            self._process = process
            return self
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def stop(self) -> None:
        """Stop nginx (fast shutdown, then SIGKILL after ``stop_timeout_s``); remove an owned folder."""
        if self._process is not None:
            self._process.stop(timeout_s=self.stop_timeout_s, sig=signal.SIGTERM)
            self._process = None
        self.port = 0
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        """True while the nginx master is alive."""
        return self._process is not None and self._process.running()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ internals
    def _render(self) -> str:
        return render_template(self.template, {
            "user_line": self._user_line(),
            "pid_file": _quoted(self.pid_file),
            "error_log": _quoted(self.error_log),
            "access_log": _quoted(self.access_log),
            "upstream_file": _quoted(self.upstream_file),
            "listen": f"{LOOPBACK}:{self.port}",
            "upstream": self.upstream,
        })

    @staticmethod
    def _user_line() -> str:
        # A master started as root switches its workers to "nobody", who cannot enter a private
        # temporary folder; keep them as the current user. Without root the directive is ignored
        # with a warning, so it is only written for root.
        if os.geteuid() != 0:
            return "# user: workers run as the user who started nginx"
        return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"

    def _healthy(self) -> bool:
        try:
            response = httpx.get(f"http://{LOOPBACK}:{self.port}/healthz", timeout=1.0, trust_env=False)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _log_count(self, needle: str) -> int:
        try:
            return self.error_log.read_text(encoding="utf-8", errors="replace").count(needle)
        except FileNotFoundError:
            return 0

    def _log_text(self) -> str:
        parts = []
        for path in (self.error_log, self.root / "logs" / "stdout.log"):
            try:
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"EmbeddedNginx(root={str(self.root)!r}, port={self.port})"
