"""Policy values that name programs to run and files to write are checked at load, with file:line;
a hostile local provider host is a clear error, never an uncaught socket.gaierror in the tick.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoscaler.errors import PolicyError, ProviderError
from autoscaler.policy.load import load_policy, parse_policy
from autoscaler.policy.model import LocalProviderConfig
from autoscaler.providers.local import LocalProvider
from autoscaler.testing.controller_rig import POLICY

NGINX_POLICY = POLICY.replace("balancer: {kind: none}", "balancer:\n  kind: nginx\n  upstream_file: {file}\n"
                              "  nginx_binary: {binary}")


def problems_of(tmp_path: Path, text: str) -> list[str]:
    """The problems ``policy validate`` reports for ``text`` written as tmp_path/p.yaml."""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return caught.value.problems


def nginx_policy(upstream_file: str, binary: str = "nginx") -> str:
    """The test policy with an nginx balancer writing ``upstream_file`` with ``binary``."""
    return NGINX_POLICY.replace("{file}", f'"{upstream_file}"').replace("{binary}", f'"{binary}"')


def test_shell_as_nginx_binary_is_refused_with_its_line(tmp_path: Path) -> None:
    """`nginx_binary: /bin/sh` (or bash, python) is refused at file:line, naming the field."""
    for binary in ("/bin/sh", "/bin/bash", shutil.which("python3") or "/usr/bin/python3", "nginx; rm -rf /"):
        (problem,) = problems_of(tmp_path, nginx_policy(str(tmp_path / "up.conf"), binary))
        assert problem.startswith(f"{tmp_path / 'p.yaml'}:11:"), problem
        assert "balancer.nginx_binary" in problem and "not an nginx binary" in problem


def test_a_program_renamed_nginx_is_refused_by_its_version_output(tmp_path: Path) -> None:
    """A shell copied to a file named `nginx` fails the `-v` check; the real nginx passes."""
    fake = tmp_path / "bin" / "nginx"
    fake.parent.mkdir()
    shutil.copy("/bin/sh", fake)
    (problem,) = problems_of(tmp_path, nginx_policy(str(tmp_path / "up.conf"), str(fake)))
    assert "balancer.nginx_binary" in problem and "not nginx" in problem
    real = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(real).exists():
        pytest.skip("nginx is not installed")
    policy = parse_policy(nginx_policy(str(tmp_path / "up.conf"), real).encode(), "ok.yaml")
    assert policy.balancer.kind == "nginx"


@pytest.mark.parametrize("target", ["/etc/passwd", "/etc/shadow", "/etc/ld.so.conf", "/usr/lib/os-release",
                                    "/proc/self/mem", "/dev/sda", "/boot/x.conf", "/etc/cron.d/x"])
def test_system_files_are_refused_as_upstream_file(tmp_path: Path, target: str) -> None:
    """A system file (or one in a system folder) as `upstream_file` is refused at its line."""
    (problem,) = problems_of(tmp_path, nginx_policy(target))
    assert ":10:" in problem and "balancer.upstream_file" in problem, problem


def test_files_not_written_by_the_autoscaler_are_not_overwritten(tmp_path: Path) -> None:
    """An existing file without the autoscaler's header, a folder or a symlink is refused."""
    foreign = tmp_path / "nginx.conf"
    foreign.write_text("events {}\nhttp { }\n")
    link = tmp_path / "link.conf"
    link.symlink_to(foreign)
    for target, message in [(foreign, "not written by the autoscaler"), (tmp_path, "not a regular file"),
                            (link, "not a regular file")]:
        (problem,) = problems_of(tmp_path, nginx_policy(str(target)))
        assert "balancer.upstream_file" in problem and message in problem, problem
    managed = tmp_path / "managed.conf"
    managed.write_text("# Managed by gpu-autoscaler (nginx balancer): ...\nupstream u {}\n")
    assert parse_policy(nginx_policy(str(managed)).encode(), "ok.yaml").balancer.kind == "nginx"


def test_target_file_in_a_system_place_is_refused(tmp_path: Path) -> None:
    """`metrics.file_sd_path: /etc/passwd` is refused at its line."""
    text = POLICY + "metrics:\n  file_sd_path: /etc/passwd\n"
    (problem,) = problems_of(tmp_path, text)
    assert "metrics.file_sd_path" in problem and "system location" in problem


@pytest.mark.parametrize("host", ["no-such-host.invalid", "127.0.0.1; rm", "::1%eth0", "", "a\x00b", "1.2.3"])
def test_hostile_provider_host_is_a_policy_error(tmp_path: Path, host: str) -> None:
    """A local provider host that is not an IP address is refused at file:line, no traceback."""
    text = POLICY.replace("provider: {kind: local}", f"provider: {{kind: local, host: {host!r}}}")
    problems = problems_of(tmp_path, text)
    assert any("provider.host" in p or "provider" in p for p in problems), problems
    assert all(p.startswith(str(tmp_path / "p.yaml") + ":") for p in problems)


def test_unresolvable_host_past_validation_is_a_provider_error(tmp_path: Path) -> None:
    """Even a host that bypassed validation fails a launch with ProviderError, not socket.gaierror."""
    policy = parse_policy(POLICY.encode(), "u.yaml")
    config = LocalProviderConfig.model_construct(host="no-such-host.invalid", state_dir=str(tmp_path))
    provider = LocalProvider.for_policy(policy.model_copy(update={"provider": config}))
    with pytest.raises(ProviderError, match="cannot bind"):
        provider._free_port(set())
