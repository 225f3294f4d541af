"""What the embedded runners share: free loopback ports, template rendering, and a child process
that is started in its own process group, waited for (bounded) and always stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import string
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from autoscaler.errors import AutoscalerError

#: The repository's ``infra/`` folder, where the config templates live (next to the package in a
#: source checkout or an editable install).
INFRA_DIR = Path(__file__).resolve().parents[2] / "infra"

LOOPBACK = "127.0.0.1"


class EmbeddedProcessError(AutoscalerError):
    """An embedded nginx or Prometheus could not be started, reconfigured or stopped."""


class ConfigTemplate(string.Template):
    """``string.Template`` with ``@@{name}`` placeholders.

    nginx configs are full of ``$variables`` and YAML has no ``@@``, so this delimiter never collides
    with the text around it.
    """

    delimiter = "@@"


def render_template(path: Path, values: Mapping[str, object]) -> str:
    """Fill ``@@{name}`` placeholders of the template at ``path``; a missing value is a ``KeyError``."""
    return ConfigTemplate(path.read_text(encoding="utf-8")).substitute({k: str(v) for k, v in values.items()})


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on at ``host`` right now (the OS picks it).

    The port is released before the caller binds it, so another process may take it in between;
    callers that start servers retry on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ChildProcess:
    """One long-running child: started in a new session so it and everything it forks (nginx's
    workers) can be signalled as a group, with its output appended to a log file.
    """

    def __init__(self, argv: Sequence[str], *, cwd: Path, log_path: Path) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the child, while started."""
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Spawn the child; its stdout and stderr go to ``log_path``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # argv is built by the runner, never run through a shell
                self.argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        """True while the child has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the child's log, for error messages."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-max_chars:]
        except OSError:
            return ""

    def wait_ready(self, probe: Callable[[], bool], *, timeout_s: float, what: str) -> None:
        """Poll ``probe`` until it is true; raise ``EmbeddedProcessError`` when the child exits or
        ``timeout_s`` passes first (stopping the child in the latter case).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running():
                code = self._proc.returncode if self._proc else None
                raise EmbeddedProcessError(
                    f"{what} exited with code {code} while starting:\n{self.log_tail()}"
                )
            if probe():
                return
            if time.monotonic() >= deadline:
                self.stop(timeout_s=5.0)
                raise EmbeddedProcessError(
                    f"{what} was not ready after {timeout_s:.1f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, *, timeout_s: float, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send ``sig`` to the child's process group, wait up to ``timeout_s``, then SIGKILL the group.

        The whole group is killed at the end even when the leader exited in time, so no worker
        outlives its master.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
        self._proc = None
