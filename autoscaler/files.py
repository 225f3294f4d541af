"""Files other programs read while we rewrite them (nginx's upstream, Prometheus's target list)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new content, never a mix.

    Writes a temporary file in the same folder, fsyncs it, renames it over ``path`` and fsyncs the
    folder so the rename survives a crash. The file keeps its permissions (0644 when new), not the
    0600 of a temporary file, so an nginx or a Prometheus running as another user can still read
    it. The temporary name starts with a dot and ends in .tmp, so globs such as a `*.json` in
    ``file_sd_configs`` never match it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
