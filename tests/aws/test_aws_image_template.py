"""The Packer template in infra/image/ and the node's service script it installs.

The template is parsed with a real HCL2 parser (python-hcl2); ``packer`` itself and the clouds are
not available here. ``asr-node-ctl`` is run for real with bash against a temporary tree, with a
recording stand-in for the docker CLI (no Docker daemon or GPU here).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from autoscaler.domain import MANAGED_BY_VALUE, TAG_MANAGED_BY, TAG_MODEL_VERSION

IMAGE_DIR = Path(__file__).resolve().parents[2] / "infra" / "image"
TEMPLATE = IMAGE_DIR / "asr-node.pkr.hcl"
CTL = IMAGE_DIR / "files" / "asr-node-ctl"
REQUIRED_VARIABLES = {"model_version", "model_source", "node_image"}


def unquote(value: Any) -> Any:
    """python-hcl2 keeps string literals' quotes; drop them."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def labelled(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """``[{'"label"': body}, ...]`` as ``{label: body}``."""
    return {unquote(label): body for block in blocks for label, body in block.items()
            if not label.startswith("__")}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The template as parsed by python-hcl2."""
    with TEMPLATE.open() as handle:
        return dict(hcl2.load(handle))


def test_both_clouds_are_built(template: dict[str, Any]) -> None:
    """One build runs an amazon-ebs and an alicloud-ecs source."""
    sources = labelled(template["source"])
    assert set(sources) == {"amazon-ebs", "alicloud-ecs"}
    [build] = template["build"]
    assert {unquote(s) for s in build["sources"]} == {"source.amazon-ebs.asr_node",
                                                       "source.alicloud-ecs.asr_node"}


def test_images_carry_the_model_version_tag_the_providers_look_up(template: dict[str, Any]) -> None:
    """Both images (and the AMI's snapshots) get autoscaler:model-version = var.model_version, managed-by."""
    [local_block] = template["locals"]
    tags = {unquote(k): unquote(v) for k, v in local_block["image_tags"].items()}
    assert tags[TAG_MODEL_VERSION] == "${var.model_version}"
    assert tags[TAG_MANAGED_BY] == MANAGED_BY_VALUE
    sources = labelled(template["source"])
    aws = labelled([sources["amazon-ebs"]])["asr_node"]
    ali = labelled([sources["alicloud-ecs"]])["asr_node"]
    assert aws["tags"] == aws["snapshot_tags"] == ali["tags"] == "${local.image_tags}"


def test_variables_are_declared_documented_and_only_the_essentials_required(template: dict[str, Any]) -> None:
    """Every var.X used is declared with a type; model_version, model_source, node_image have no default."""
    declared = labelled(template["variable"])
    used = set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)", TEMPLATE.read_text()))
    assert used <= set(declared)
    assert {name for name, body in declared.items() if "default" not in body} == REQUIRED_VARIABLES
    assert all("type" in body for body in declared.values())
    readme = (IMAGE_DIR / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in declared)


def test_provisioning_uses_files_that_exist(template: dict[str, Any]) -> None:
    """The shell provisioner's script and every asset provision.sh installs are in infra/image/."""
    [build] = template["build"]
    shells = [body for provisioner in build["provisioner"] for kind, body in provisioner.items()
              if unquote(kind) == "shell"]
    scripts = [unquote(shell["script"]) for shell in shells if "script" in shell]
    assert scripts == ["${path.root}/provision.sh"]
    provision = (IMAGE_DIR / "provision.sh").read_text()
    assets = set(re.findall(r"\$ASSETS_DIR/([\w.-]+)", provision))
    assert assets == {"asr-node-ctl", "asr-node.service", "asr-node-agent.service", "dcgm-exporter.service",
                      "user-data.example.yaml"}
    for asset in assets:
        assert (IMAGE_DIR / "files" / asset).is_file(), asset


@pytest.mark.parametrize("script", [IMAGE_DIR / "provision.sh", CTL])
def test_shell_scripts_parse(script: Path) -> None:
    """The bake script and the service script are valid bash."""
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def test_node_unit_runs_the_ctl_script_and_dcgm_runs_on_9400() -> None:
    """asr-node.service runs asr-node-ctl prepare/run/stop; dcgm-exporter publishes :9400."""
    node = (IMAGE_DIR / "files" / "asr-node.service").read_text()
    assert "ExecStartPre=/usr/local/lib/asr-node/asr-node-ctl prepare" in node
    assert "ExecStart=/usr/local/lib/asr-node/asr-node-ctl run" in node
    assert "ExecStop=/usr/local/lib/asr-node/asr-node-ctl stop" in node
    assert "WantedBy=multi-user.target" in node
    dcgm = (IMAGE_DIR / "files" / "dcgm-exporter.service").read_text()
    assert "--publish 9400:9400" in dcgm and "${DCGM_EXPORTER_IMAGE}" in dcgm


def test_agent_unit_owns_the_node_port_and_proxies_to_the_internal_server() -> None:
    """asr-node-agent.service runs `autoscaler node-agent` on $NODE_PORT in front of the server on
    127.0.0.1:$ASR_SERVER_PORT with the node's streams, and is enabled and stopped before the server."""
    unit = (IMAGE_DIR / "files" / "asr-node-agent.service").read_text()
    command = " ".join(unit.split("ExecStart=", 1)[1].split("\\\n")).split("\n")[0]
    words = command.split()
    assert words[:2] == ["/opt/asr/node-agent/bin/autoscaler", "node-agent"]
    assert words[words.index("--listen") + 1] == "0.0.0.0:${NODE_PORT}"
    assert words[words.index("--upstream") + 1] == "http://127.0.0.1:${ASR_SERVER_PORT}"
    assert words[words.index("--max-streams") + 1] == "${NODE_STREAMS}"
    assert words[words.index("--probe-path") + 1] == "${AGENT_PROBE_PATH}"
    assert "After=network-online.target asr-node.service" in unit  # so it stops (drains) first
    assert "KillSignal=SIGTERM" in unit and "WantedBy=multi-user.target" in unit
    provision = (IMAGE_DIR / "provision.sh").read_text()
    assert "systemctl enable asr-node.service asr-node-agent.service dcgm-exporter.service" in provision
    for setting in ("ASR_SERVER_PORT", "NODE_STREAMS", "NODE_MAX_QUEUE", "AGENT_PROBE_PATH"):
        assert f"{setting}=${setting}" in provision, setting


def test_agent_unit_flags_are_flags_the_agent_has() -> None:
    """Every flag the unit passes is one `autoscaler node-agent --help` lists."""
    from typer.testing import CliRunner

    from autoscaler.cli import app

    unit = (IMAGE_DIR / "files" / "asr-node-agent.service").read_text()
    flags = set(re.findall(r"(--[a-z][a-z-]+)", unit.split("ExecStart=", 1)[1].split("KillSignal")[0]))
    help_text = CliRunner().invoke(app, ["node-agent", "--help"], terminal_width=200).output
    assert flags and all(flag in help_text for flag in flags), flags


# ---------------------------------------------------------------------------------- asr-node-ctl
class Node:
    """A temporary tree for asr-node-ctl: node.env, a model folder, a recording docker."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model_dir = root / "models" / "fun-asr-nano-2512"
        self.model_dir.mkdir(parents=True)
        (self.model_dir / ".model-version").write_text("fun-asr-nano-2512\n")
        self.node_env = root / "node.env"
        self.node_env.write_text(
            "CLOUD=aws\nMODEL_VERSION=fun-asr-nano-2512\n"
            f"MODEL_DIR={self.model_dir}\nNODE_IMAGE=registry.example.com/fun-asr-node:1.4.0\n"
            "NODE_PORT=7860\nGPU_DEVICE=0\nNODE_STOP_GRACE_SECONDS=300\n")
        self.instance_env = root / "instance.env"
        self.run_dir = root / "run"
        self.docker_log = root / "docker.log"
        self.docker = root / "docker"
        self.docker.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{self.docker_log}"\n')
        self.docker.chmod(0o755)

    def ctl(self, command: str, instance_env: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``asr-node-ctl command`` with ``instance_env`` as the user data's settings."""
        if instance_env is not None:
            self.instance_env.write_text(instance_env)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ASR_NODE_ENV": str(self.node_env),
               "ASR_INSTANCE_ENV": str(self.instance_env), "ASR_RUN_DIR": str(self.run_dir),
               "ASR_DOCKER": str(self.docker)}
        return subprocess.run(["bash", str(CTL), command], env=env, capture_output=True, text=True,
                              timeout=30, check=False)

    def container_env(self) -> dict[str, str]:
        """The environment prepare composed for the container."""
        lines = (self.run_dir / "container.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)

    def docker_args(self) -> list[str]:
        """The arguments the last docker call got."""
        return self.docker_log.read_text().splitlines()


@pytest.fixture
def node(tmp_path: Path) -> Node:
    """A fresh node tree."""
    return Node(tmp_path)


def test_prepare_refuses_to_start_without_a_history_dsn(node: Node) -> None:
    """With no DSN in user data, the node does not start (no silent local SQLite history)."""
    result = node.ctl("prepare", "NODE_PORT=7860\n")
    assert result.returncode == 1
    assert "refusing to start with local history" in result.stderr
    assert not (node.run_dir / "container.env").exists()


def test_prepare_hands_the_postgres_dsn_to_the_container(node: Node) -> None:
    """A postgresql:// DSN from user data goes to the container (0600), with local SQLite off and one GPU."""
    dsn = "postgresql://asr:secret@10.0.0.5:5432/asr_history"
    result = node.ctl("prepare", f"ASR_HISTORY_DSN={dsn}\n")
    assert result.returncode == 0, result.stderr
    env = node.container_env()
    assert env["ASR_HISTORY_DSN"] == dsn and env["ASR_HISTORY"] == "postgres"
    assert env["ASR_HISTORY_LOCAL_SQLITE"] == "off" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["MODEL_DIR"] == "/models/fun-asr-nano-2512"
    assert stat.S_IMODE((node.run_dir / "container.env").stat().st_mode) == 0o600


def test_prepare_rejects_a_dsn_that_is_not_postgres(node: Node) -> None:
    """A DSN of another database is refused."""
    assert node.ctl("prepare", "ASR_HISTORY_DSN=sqlite:///webui/data/history.db\n").returncode == 1


def test_history_can_be_switched_off_explicitly(node: Node) -> None:
    """ASR_HISTORY=off starts without a DSN and says so to the container."""
    assert node.ctl("prepare", "ASR_HISTORY=off\n").returncode == 0
    assert node.container_env()["ASR_HISTORY"] == "off"


def test_prepare_refuses_a_model_of_another_version(node: Node) -> None:
    """A model folder whose marker names another version stops the node from starting."""
    (node.model_dir / ".model-version").write_text("fun-asr-nano-2411\n")
    result = node.ctl("prepare", "ASR_HISTORY=off\n")
    assert result.returncode == 1 and "does not hold model" in result.stderr


def test_run_starts_one_container_on_one_gpu_with_the_model_read_only(node: Node) -> None:
    """run execs docker with --gpus device=N, the internal port on loopback only (the node agent owns
    the node port), the model mounted read-only, no pull."""
    assert node.ctl("prepare", "ASR_HISTORY=off\nASR_SERVER_PORT=7871\nGPU_DEVICE=1\n").returncode == 0
    assert node.ctl("run").returncode == 0
    args = node.docker_args()
    assert args[:2] == ["run", "--rm"]
    assert "--pull=never" in args
    assert args[args.index("--gpus") + 1] == "device=1"
    assert args[args.index("--publish") + 1] == "127.0.0.1:7871:7860"
    assert args[args.index("--volume") + 1] == f"{node.model_dir}:/models/fun-asr-nano-2512:ro"
    assert args[args.index("--env-file") + 1] == str(node.run_dir / "container.env")
    assert args[-1] == "registry.example.com/fun-asr-node:1.4.0"


def test_stop_gives_in_flight_work_the_grace_period(node: Node) -> None:
    """stop asks docker to stop the node with NODE_STOP_GRACE_SECONDS."""
    assert node.ctl("stop", "").returncode == 0
    assert node.docker_args() == ["stop", "--time", "300", "asr-node"]
