"""Checks on policy values that name programs to run and files to write.

A policy file is configuration that runs programs (``balancer.nginx_binary``) and overwrites files
(``balancer.upstream_file``, ``metrics.file_sd_path``) with the controller's privileges, so those
values are held to what they are for: the binary must really be nginx, and a file the controller
writes must not be a system file or a file some other program owns. Each check returns the value
or raises ``ValueError`` with a sentence, so the loader reports it as ``file:line:column``.

Who may edit policy files is in ``docs/reliability.md``: whoever may edit one may make the
controller run the nginx they name and rewrite the files they name.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

#: The first line of every file the autoscaler writes for nginx (``balancers.nginx``'s header).
MANAGED_MARKER = "# Managed by gpu-autoscaler"
#: Control characters (NUL, newline...) never belong in a path or a host.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Folders whose files belong to the operating system; the controller never writes there.
_SYSTEM_DIRS = tuple(
    Path(p) for p in ("/bin", "/boot", "/dev", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
                      "/sys", "/usr", "/var/lib", "/var/spool", "/root/.ssh", "/run")
)
#: Under /etc only the folders of the programs whose configuration the controller feeds.
_ETC_ALLOWED = (Path("/etc/nginx"), Path("/etc/prometheus"), Path("/usr/local/etc"))
_NGINX_VERSION_TIMEOUT_S = 5.0


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_no_control(value: str) -> str:
    """Refuse NUL, newlines and other control characters."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (NUL, newline...)")
    return value


def check_nginx_binary(value: str) -> str:
    """``value`` names nginx: its file name is ``nginx`` and, when installed, ``-v`` says nginx.

    A binary not installed here passes (a policy may be validated away from the machine that runs
    it; running it later fails with ``BalancerError``). An installed one is run once with ``-v``
    (stdin closed, a timeout) only after its name matched, so ``/bin/sh`` is never run.
    """
    check_no_control(value)
    if not value.strip() or Path(value).name != "nginx":
        raise ValueError(f"{value!r} is not an nginx binary: its file name must be `nginx`")
    found = shutil.which(value)
    if found is None:
        return value
    real = Path(found).resolve()
    if real.name != "nginx":
        raise ValueError(f"{value!r} resolves to {str(real)!r}, which is not named `nginx`")
    stat = real.stat()
    problem = _nginx_version_problem(str(real), stat.st_mtime_ns, stat.st_size)
    if problem:
        raise ValueError(f"{value!r} is not nginx: {problem}")
    return value


@functools.lru_cache(maxsize=32)
def _nginx_version_problem(path: str, _mtime_ns: int, _size: int) -> str | None:
    """Why ``path -v`` does not identify nginx (cached per file version), or None."""
    try:
        done = subprocess.run(  # a fixed argv, no shell; the name was checked first
            [path, "-v"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
            timeout=_NGINX_VERSION_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{path} -v` could not run: {exc}"
    said = (done.stderr + done.stdout).strip()
    if not said.startswith("nginx version:"):
        return f"`{path} -v` printed {said[:80]!r}, not `nginx version: ...`"
    return None


def check_written_file(value: str, *, managed_marker: str | None = None, json_list: bool = False) -> str:
    """``value`` is a file the controller may (over)write: not a system file, not another's file.

    Refused: control characters, a folder, a path in a system folder (``/etc`` outside nginx's and
    Prometheus's folders, ``/usr``, ``/proc``...), an existing file that is not a regular file or
    does not look like one the autoscaler wrote (``managed_marker`` as its first line, or a JSON
    list for ``json_list``), and a file or folder the controller cannot write.
    """
    check_no_control(value)
    if not value.strip():
        raise ValueError("must name a file")
    path = Path(value).expanduser()
    resolved = path.resolve()
    if any(_inside(resolved, d) for d in _SYSTEM_DIRS) or (
        _inside(resolved, Path("/etc")) and not any(_inside(resolved, d) for d in _ETC_ALLOWED)
    ):
        raise ValueError(f"{str(resolved)!r} is a system location; the controller never writes there")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ValueError(f"{value!r} exists and is not a regular file")
    if path.exists():
        try:
            head = path.read_text(encoding="utf-8", errors="replace")[:4096]
        except OSError as exc:
            raise ValueError(f"cannot read {value!r}: {exc.strerror}") from exc
        if head.strip():
            if managed_marker is not None and not head.startswith(managed_marker):
                raise ValueError(
                    f"{value!r} exists and was not written by the autoscaler (no {managed_marker!r} "
                    "header): it will not be overwritten"
                )
            if json_list and not head.lstrip().startswith("["):
                raise ValueError(f"{value!r} exists and is not a target list the autoscaler wrote")
        if not os.access(path, os.W_OK):
            raise ValueError(f"{value!r} is not writable by this user")
        return value
    # A folder that does not exist yet is created on first write (or the policy is meant for
    # another machine); one that exists must let this user create the file.
    folder = resolved.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create {value!r}: {str(folder)!r} is not writable by this user")
    return value


def check_bind_host(value: str) -> str:
    """An IP address literal to bind and reach local nodes on (no host name, no IPv6 scope)."""
    check_no_control(value)
    try:
        if "%" in value:
            raise ValueError(value)
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (give one, such as 127.0.0.1)") from None
    return value
