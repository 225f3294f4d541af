"""The nginx balancer: one ``upstream`` block in a file of its own, rewritten and gracefully reloaded.

The operator's nginx.conf ``include``s the upstream file and ``proxy_pass``es to the upstream by
name (see ``infra/nginx/nginx.conf.template``). Every ``apply``:

1. renders the block in the reference deployment's format (``zone``, ``least_conn``, one
   ``server`` line per backend, each ending in a ``# instance_id=...`` comment so ``current`` can
   read the file back), servers sorted so that the same set always renders the same text;
2. does nothing when that text is already the file's content and this process has reloaded nginx
   since it started (no reload for an unchanged list); the first ``apply`` of a process checks and
   reloads, so a list written by a controller that crashed before its reload is put in force on
   restart, unless the executor vouches that the last apply completed (``assume_in_force``: its
   intent closed and none is open since);
3. writes the file atomically (temporary file, fsync, ``os.replace``), runs ``nginx -t`` on the
   whole configuration, then ``nginx -s reload`` (SIGHUP to the master: new workers take new
   connections, old workers finish the requests they hold);
4. restores the previous file when the check or the reload fails and raises ``BalancerError``
   carrying nginx's own message.

``apply`` returns once nginx has accepted the reload signal. The master starts the new workers
and retires the old ones about 100 ms later; until then an old worker may still accept a
connection for the previous list (the executor's drain watching covers that window).

Rendering decisions:

- An upstream with no server is invalid nginx. An empty backend list renders the single line
  ``server 127.0.0.1:1 down;`` marked as a placeholder, so nginx answers 502 at once instead of
  refusing the whole configuration; ``current`` does not report it.
- ``backup`` is rendered together with ``least_conn``: nginx rejects ``backup`` only with the
  ``hash``, ``ip_hash`` and ``random`` methods (checked with nginx 1.22).
- Every backend field is checked by ``domain.backend_problem`` before rendering (an IP literal or
  host name, a port 1-65535, an instance id of letters, digits and ``._-``, bounded integers), and
  the upstream name and zone size by a token check, so text that could change the file's structure
  (whitespace, ``;``, ``{``, ``}``, ``#``, quotes, NUL) never reaches the file. The controller
  leaves such a backend out of the list (with the reason) so one bad node cannot block the pool.

One process should own a given nginx: ``apply`` is serialised within a process, not across them.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from autoscaler.domain import Backend, backend_problem
from autoscaler.errors import BalancerError
from autoscaler.files import atomic_write
from autoscaler.policy.model import NginxBalancerConfig
from autoscaler.policy.safety import MANAGED_MARKER

#: The line standing in for "no backends" (nginx refuses an upstream without servers).
PLACEHOLDER_SERVER = "server 127.0.0.1:1 down;  # placeholder: no backends in force"
_HEADER = f"{MANAGED_MARKER} (nginx balancer): rewritten on every change, edits are lost.\n"
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f;{}#'\"\\]")
_SERVER_LINE = re.compile(
    r"^server\s+(?:\[(?P<ip6>[^\]]+)\]|(?P<host>[^\s:;]+)):(?P<port>\d+)"
    r"(?P<params>(?:\s+[^\s;#]+)*)\s*;\s*#\s*instance_id=(?P<iid>\S+)\s*$"
)
#: Where a parsed server line takes the values it does not state from (nginx's own defaults
#: differ, but every line this module writes states them all).
_DEFAULT_BACKEND = Backend(address="", port=0, instance_id="")
_PARAM = re.compile(r"^(?P<key>weight|max_fails|fail_timeout)=(?P<value>\d+)(?P<unit>s?)$")


def render_upstream(name: str, zone_size: str, backends: Sequence[Backend]) -> str:
    """The upstream file's text for ``backends``, in the reference deployment's format.

    Primaries come before backups, each sorted by address, port and instance id. Raises
    ``BalancerError`` for a duplicate instance id or endpoint, or for text nginx would misparse.
    """
    for text in (name, zone_size):
        _check_token(text, "upstream setting")
    seen_ids: set[str] = set()
    seen_endpoints: set[tuple[str, int]] = set()
    for backend in backends:
        problem = backend_problem(backend)
        if problem:
            raise BalancerError(f"backend {backend.instance_id!r} refused: {problem}")
        if backend.instance_id in seen_ids:
            raise BalancerError(f"instance {backend.instance_id} appears twice in the backend list")
        if (backend.address, backend.port) in seen_endpoints:
            raise BalancerError(f"endpoint {backend.endpoint} appears twice in the backend list")
        seen_ids.add(backend.instance_id)
        seen_endpoints.add((backend.address, backend.port))

    ordered = sorted(backends, key=lambda b: (b.backup, b.address, b.port, b.instance_id))
    lines = [_server_line(b) for b in ordered] or [PLACEHOLDER_SERVER]
    body = "".join(f"    {line}\n" for line in lines)
    return f"{_HEADER}upstream {name} {{\n    zone {name} {zone_size};\n    least_conn;\n{body}}}\n"


def parse_upstream(text: str) -> list[Backend]:
    """The backends of an upstream file written by ``render_upstream`` (the placeholder excluded).

    Raises ``BalancerError`` on a ``server`` line this module did not write, rather than return a
    partial list.
    """
    backends: list[Backend] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("server ") and not line.startswith("server\t"):
            continue
        if line == PLACEHOLDER_SERVER:
            continue
        match = _SERVER_LINE.match(line)
        if not match:
            raise BalancerError(f"line {number} is not a server line written by the autoscaler: {line!r}")
        backends.append(_backend_from(match, number))
    return backends


def _backend_from(match: re.Match[str], number: int) -> Backend:
    values: dict[str, int] = {}
    backup = False
    for param in match.group("params").split():
        if param == "backup":
            backup = True
            continue
        found = _PARAM.match(param)
        if not found:
            raise BalancerError(f"line {number}: unknown server parameter {param!r}")
        values[found.group("key")] = int(found.group("value"))
    defaults = _DEFAULT_BACKEND
    return Backend(
        address=match.group("ip6") or match.group("host"),
        port=int(match.group("port")),
        instance_id=match.group("iid"),
        weight=values.get("weight", defaults.weight),
        max_fails=values.get("max_fails", defaults.max_fails),
        fail_timeout_s=values.get("fail_timeout", defaults.fail_timeout_s),
        backup=backup,
    )


def _server_line(backend: Backend) -> str:
    host = f"[{backend.address}]" if ":" in backend.address else backend.address
    params = f"weight={backend.weight} max_fails={backend.max_fails} fail_timeout={backend.fail_timeout_s}s"
    if backend.backup:
        params += " backup"
    return f"server {host}:{backend.port} {params};  # instance_id={backend.instance_id}"


def _check_token(text: str, what: str) -> None:
    if not text or _UNSAFE.search(text):
        raise BalancerError(f"{what} {text!r} is empty or holds characters nginx would misparse")


class NginxBalancer:
    """A ``Balancer`` that owns one nginx upstream block; see the module docstring for the steps.

    ``command_timeout_s`` bounds each ``nginx -t`` and ``nginx -s reload`` call.
    """

    name = "nginx"

    def __init__(self, config: NginxBalancerConfig, *, command_timeout_s: float = 15.0) -> None:
        self.config = config
        self.upstream_file = Path(config.upstream_file)
        self.command_timeout_s = command_timeout_s
        self._lock = threading.Lock()
        #: False until this process has had nginx reload the file once: the file may hold a list a
        #: crashed predecessor wrote but never got nginx to load, so "the file already matches" proves
        #: nothing about what nginx serves until then.
        self._reloaded = False

    # ----------------------------------------------------------------------------------- protocol
    def current(self) -> list[Backend]:
        """The backends in the upstream file (an absent file means none yet).

        Raises ``BalancerError`` when the file cannot be read or holds lines this balancer did not write.
        """
        text = self._read()
        return [] if text is None else parse_upstream(text)

    def assume_in_force(self) -> None:
        """The file's list was put in force by a completed, recorded apply (``ReloadingBalancer``):
        an unchanged list needs no reload. A reload retires nginx's old workers, which closes their
        idle keep-alive client connections, so a restart should not add one it does not need."""
        with self._lock:
            self._reloaded = True

    def apply(self, backends: Sequence[Backend]) -> None:
        """Put exactly ``backends`` in force with a checked, graceful reload; no-op when unchanged.

        On a failed check or reload the previous file is restored and ``BalancerError`` (chained to
        the failed command) carries nginx's message.
        """
        new_text = render_upstream(self.config.upstream, self.config.zone_size, backends)
        with self._lock:
            old_text = self._read()
            if old_text == new_text and self._reloaded:
                return
            if old_text != new_text:
                self._write(new_text)
            try:
                self._nginx("-t")
                self._nginx("-s", "reload")
            except BalancerError:
                if old_text != new_text:
                    self._restore(old_text)
                raise
            self._reloaded = True

    # ------------------------------------------------------------------------------------ helpers
    def command(self, *args: str) -> list[str]:
        """The nginx command line for ``args`` with this balancer's ``-p`` and ``-c``."""
        argv = [self.config.nginx_binary]
        if self.config.nginx_prefix:
            argv += ["-p", self.config.nginx_prefix]
        if self.config.nginx_conf:
            argv += ["-c", self.config.nginx_conf]
        return [*argv, *args]

    def _nginx(self, *args: str) -> None:
        argv = self.command(*args)
        try:
            subprocess.run(  # argv comes from the validated policy, never through a shell
                argv, capture_output=True, text=True, timeout=self.command_timeout_s, check=True,
            )
        except subprocess.CalledProcessError as exc:
            message = (exc.stderr or exc.stdout or "").strip()
            raise BalancerError(
                f"`{' '.join(argv)}` failed (exit {exc.returncode}); the previous upstream is kept: {message}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise BalancerError(
                f"`{' '.join(argv)}` did not finish within {self.command_timeout_s:.0f} s; "
                "the previous upstream is kept"
            ) from exc
        except OSError as exc:
            raise BalancerError(
                f"cannot run `{' '.join(argv)}`: {exc}; the previous upstream is kept"
            ) from exc

    def _read(self) -> str | None:
        try:
            return self.upstream_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BalancerError(f"cannot read the upstream file {self.upstream_file}: {exc}") from exc

    def _write(self, text: str) -> None:
        try:
            atomic_write(self.upstream_file, text)
        except OSError as exc:
            raise BalancerError(f"cannot write the upstream file {self.upstream_file}: {exc}") from exc

    def _restore(self, old_text: str | None) -> None:
        # The file must match what nginx serves again; a failure here is reported with the original
        # error (the caller's BalancerError) as context.
        if old_text is None:
            self.upstream_file.unlink(missing_ok=True)
        else:
            self._write(old_text)
