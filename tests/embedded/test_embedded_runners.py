"""EmbeddedNginx and EmbeddedPrometheus: real processes on loopback that start, answer, reload and
always stop (their whole process group), plus the child-process helper they share.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from autoscaler.embedded import EmbeddedNginx, EmbeddedProcessError, EmbeddedPrometheus
from autoscaler.embedded._process import ChildProcess
from autoscaler.testing import wait_until
from autoscaler.testing.embedded_fixtures import require_binary


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int) -> None:
    """Wait (up to 2 s: a killed process takes a moment to go) until group ``pgid`` has no live process."""
    wait_until(lambda: not group_members(pgid), timeout_s=2.0, message=f"process group {pgid} gone")


@pytest.mark.integration
def test_nginx_serves_healthz_and_a_502_for_the_empty_upstream(tmp_path: Path) -> None:
    """A started nginx answers /healthz with 200 and proxies / to the empty (placeholder) upstream as 502."""
    require_binary("nginx")
    with EmbeddedNginx(tmp_path / "ngx") as nginx, httpx.Client(trust_env=False, timeout=5.0) as http:
        health = http.get(nginx.url + "/healthz")
        assert (health.status_code, health.text) == (200, "healthy\n")
        assert health.headers["content-type"].startswith("text/plain")
        assert http.get(nginx.url + "/api/predict/").status_code == 502
        assert nginx.pid_file.read_text().strip().isdigit()
        assert nginx.conf_path.parent == nginx.upstream_file.parent == tmp_path / "ngx"


@pytest.mark.integration
def test_nginx_config_passes_nginx_t_with_the_reference_server_block(tmp_path: Path) -> None:
    """The rendered nginx.conf passes `nginx -t` and holds the reference deployment's proxy settings."""
    require_binary("nginx")
    with EmbeddedNginx(tmp_path / "ngx") as nginx:
        conf = nginx.conf_path.read_text()
        check = subprocess.run(["nginx", "-p", f"{nginx.root}/", "-c", str(nginx.conf_path), "-t"],
                               capture_output=True, text=True, timeout=10, check=False)
    assert check.returncode == 0, check.stderr
    for line in ("proxy_pass http://fun_asr_backend;", "proxy_read_timeout 300s;", "proxy_send_timeout 300s;",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;", "include "):
        assert line in conf
    assert "@@" not in conf


@pytest.mark.integration
def test_nginx_stop_ends_master_and_workers_and_removes_an_owned_folder() -> None:
    """Stopping ends the whole process group; a folder the runner created is removed."""
    require_binary("nginx")
    nginx = EmbeddedNginx().start()
    pgid = int(nginx.pid_file.read_text())
    root = nginx.root
    assert group_members(pgid)
    nginx.stop()
    wait_group_gone(pgid)
    assert not root.exists()
    assert not nginx.running


@pytest.mark.integration
def test_nginx_start_failure_reports_the_log(tmp_path: Path) -> None:
    """A config nginx refuses makes start raise EmbeddedProcessError with nginx's message."""
    require_binary("nginx")
    template = tmp_path / "broken.template"
    template.write_text(
        "pid @@{pid_file};\nerror_log @@{error_log};\nevents {}\nhttp { nonsense_directive on; }\n"
    )
    nginx = EmbeddedNginx(tmp_path / "ngx", template=template)
    with pytest.raises(EmbeddedProcessError, match="nonsense_directive"):
        nginx.start()
    assert not nginx.running
    assert (tmp_path / "ngx" / "logs").is_dir(), "a folder given by the caller is kept for its logs"

    owned = EmbeddedNginx(template=template)
    with pytest.raises(EmbeddedProcessError), owned:
        pass
    assert not owned.root.exists(), "a folder the runner created is removed after a failed start"


@pytest.mark.integration
def test_prometheus_starts_checks_and_reloads(tmp_path: Path) -> None:
    """Prometheus becomes ready, its rendered config passes promtool, and a lifecycle reload is accepted."""
    require_binary("prometheus")
    with EmbeddedPrometheus(tmp_path / "prom", scrape_interval_s=0.5) as prom:
        assert httpx.get(prom.url + "/-/ready", timeout=5.0, trust_env=False).status_code == 200
        config = prom.config_file.read_text()
        assert "scrape_interval: 500ms" in config and str(prom.targets_file) in config
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "config", str(prom.config_file)],
                                   capture_output=True, text=True, timeout=30, check=False)
            assert check.returncode == 0, check.stdout + check.stderr
        prom.reload()
        assert prom.active_targets() == []
        assert prom.source_config().url == prom.url


@pytest.mark.integration
def test_prometheus_stop_ends_the_process(tmp_path: Path) -> None:
    """After stop, nothing answers on the old port and the process is gone."""
    require_binary("prometheus")
    prom = EmbeddedPrometheus(tmp_path / "prom").start()
    url = prom.url
    prom.stop()
    assert not prom.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/-/ready", timeout=2.0, trust_env=False)
    assert (tmp_path / "prom").exists(), "a folder given by the caller is kept"


def test_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    """stop() escalates to SIGKILL of the whole group when the child ignores SIGTERM."""
    child = ChildProcess(["sh", "-c", "trap '' TERM; sleep 60 & wait"], cwd=tmp_path,
                         log_path=tmp_path / "log")
    child.start()
    pgid = child.pid
    assert pgid is not None
    time.sleep(0.2)  # let the shell install its trap
    started = time.monotonic()
    child.stop(timeout_s=0.5, sig=signal.SIGTERM)
    assert time.monotonic() - started < 5.0
    wait_group_gone(pgid)


def test_wait_ready_reports_an_early_exit(tmp_path: Path) -> None:
    """A child that exits while starting raises EmbeddedProcessError with the end of its output."""
    child = ChildProcess(["sh", "-c", "echo cannot bind >&2; exit 3"], cwd=tmp_path,
                         log_path=tmp_path / "log")
    child.start()
    with pytest.raises(EmbeddedProcessError, match=r"(?s)code 3.*cannot bind"):
        child.wait_ready(lambda: False, timeout_s=5.0, what="child")
    child.stop(timeout_s=1.0)
