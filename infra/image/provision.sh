#!/usr/bin/env bash
# Bake the ASR node into a machine image (run by Packer as root on the build VM; see README.md).
#
#   1. Docker and the NVIDIA container toolkit (the NVIDIA driver comes with the base image);
#   2. the model weights, fetched from MODEL_SOURCE into /opt/asr/models/$MODEL_VERSION (read-only);
#   3. the node and DCGM exporter container images, pulled now so a node never needs a registry
#      to boot (the units run them with --pull=never);
#   4. the node agent (`autoscaler node-agent`, from the wheel in $AGENT_DIR) in its own virtual
#      environment: it owns the node port and proxies to the ASR server on an internal port;
#   5. the systemd units and /etc/asr-node/node.env; the node's history DSN is NOT baked: it comes
#      from each instance's user data or the cloud's secret store (asr-node-ctl prepare);
#   6. clean-up so every instance launched from the image starts fresh (cloud-init, machine-id).
#
# Environment (set by the template): MODEL_VERSION, MODEL_SOURCE, MODEL_SHA256 (may be empty),
# NODE_IMAGE, DCGM_EXPORTER_IMAGE, NODE_PORT, NODE_STOP_GRACE_SECONDS, ASSETS_DIR, CLOUD (aws|alibaba),
# ASR_SERVER_PORT, NODE_STREAMS, NODE_MAX_QUEUE, AGENT_PROBE_PATH, AGENT_DIR (the uploaded agent wheel).
# Optional: ALLOW_NO_GPU_AT_BAKE=1 to bake on a build VM without a GPU (the driver is then not
# checked), DOCKER_RPM_REPO, NVIDIA_CONTAINER_REPO_BASE, ALIYUN_CLI_URL.
set -euo pipefail

: "${MODEL_VERSION:?}" "${MODEL_SOURCE:?}" "${NODE_IMAGE:?}" "${DCGM_EXPORTER_IMAGE:?}" "${CLOUD:?}"
MODEL_SHA256="${MODEL_SHA256:-}"
NODE_PORT="${NODE_PORT:-7860}"
NODE_STOP_GRACE_SECONDS="${NODE_STOP_GRACE_SECONDS:-300}"
ASR_SERVER_PORT="${ASR_SERVER_PORT:-7861}"
NODE_STREAMS="${NODE_STREAMS:-10}"
NODE_MAX_QUEUE="${NODE_MAX_QUEUE:-100}"
AGENT_PROBE_PATH="${AGENT_PROBE_PATH:-/}"
ASSETS_DIR="${ASSETS_DIR:-/tmp/asr-image}"
AGENT_DIR="${AGENT_DIR:-/tmp/asr-agent}"
AGENT_VENV=/opt/asr/node-agent
DOCKER_RPM_REPO="${DOCKER_RPM_REPO:-https://download.docker.com/linux/centos/docker-ce.repo}"
NVIDIA_CONTAINER_REPO_BASE="${NVIDIA_CONTAINER_REPO_BASE:-https://nvidia.github.io/libnvidia-container}"
ALIYUN_CLI_URL="${ALIYUN_CLI_URL:-https://aliyuncli.alicdn.com/aliyun-cli-linux-latest-amd64.tgz}"

MODEL_ROOT=/opt/asr/models
MODEL_DIR="$MODEL_ROOT/$MODEL_VERSION"
LIB_DIR=/usr/local/lib/asr-node
CONF_DIR=/etc/asr-node

log() { echo "provision: $*" >&2; }
die() { log "error: $*"; exit 1; }

export DEBIAN_FRONTEND=noninteractive

if command -v apt-get >/dev/null; then
    PKG=apt
elif command -v dnf >/dev/null; then
    PKG=dnf
else
    die "neither apt-get nor dnf found; use an Ubuntu/Debian or Alibaba Cloud Linux / RHEL-like base image"
fi

pkg_install() {
    if [[ $PKG == apt ]]; then
        apt-get install -y --no-install-recommends "$@"
    else
        dnf install -y "$@"
    fi
}

# ---------------------------------------------------------------------------------- base packages
install_base() {
    log "installing base packages"
    if [[ $PKG == apt ]]; then
        apt-get update -y
    fi
    pkg_install ca-certificates curl jq tar gzip unzip python3
    if [[ $PKG == apt ]]; then
        pkg_install python3-venv
    fi
    if ! command -v docker >/dev/null; then
        log "installing Docker"
        if [[ $PKG == apt ]]; then
            pkg_install docker.io
        else
            dnf config-manager --add-repo "$DOCKER_RPM_REPO"
            pkg_install docker-ce docker-ce-cli containerd.io
        fi
    fi
    systemctl enable --now docker
}

install_gpu_runtime() {
    if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
        log "NVIDIA driver: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n1)"
    elif [[ "${ALLOW_NO_GPU_AT_BAKE:-0}" == 1 ]]; then
        log "warning: no working nvidia-smi on the build VM; the base image must bring the driver"
    else
        die "no working NVIDIA driver (nvidia-smi); use a GPU base image and build type, or set ALLOW_NO_GPU_AT_BAKE=1"
    fi
    if ! command -v nvidia-ctk >/dev/null; then
        log "installing the NVIDIA container toolkit"
        if [[ $PKG == apt ]]; then
            curl -fsSL "$NVIDIA_CONTAINER_REPO_BASE/gpgkey" \
                | gpg --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
            curl -fsSL "$NVIDIA_CONTAINER_REPO_BASE/stable/deb/nvidia-container-toolkit.list" \
                | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#' \
                > /etc/apt/sources.list.d/nvidia-container-toolkit.list
            apt-get update -y
        else
            curl -fsSL "$NVIDIA_CONTAINER_REPO_BASE/stable/rpm/nvidia-container-toolkit.repo" \
                > /etc/yum.repos.d/nvidia-container-toolkit.repo
        fi
        pkg_install nvidia-container-toolkit
    fi
    # Lets `docker run --gpus device=N` hand exactly one GPU to the node's container.
    nvidia-ctk runtime configure --runtime=docker
    systemctl restart docker
}

install_cloud_cli() {
    # The node reads its history DSN from the cloud's secret store at boot (asr-node-ctl).
    if [[ $CLOUD == aws ]] && ! command -v aws >/dev/null; then
        log "installing the AWS CLI"
        pkg_install awscli
    fi
    if [[ $CLOUD == alibaba ]] && ! command -v aliyun >/dev/null; then
        log "installing the Alibaba Cloud CLI"
        curl -fsSL "$ALIYUN_CLI_URL" | tar -xz -C /usr/local/bin aliyun
    fi
}

# ------------------------------------------------------------------------------------------ model
fetch_model() {
    local work src name
    work="$(mktemp -d /var/tmp/asr-model.XXXXXX)"
    name="$(basename "${MODEL_SOURCE%%\?*}")"
    src="$work/$name"
    log "fetching model $MODEL_VERSION from $MODEL_SOURCE"
    case "$MODEL_SOURCE" in
        http://* | https://*)
            curl --fail --location --retry 5 --retry-delay 10 --output "$src" "$MODEL_SOURCE"
            ;;
        s3://*/)
            aws s3 cp --recursive --only-show-errors "$MODEL_SOURCE" "$src"
            ;;
        s3://*)
            aws s3 cp --only-show-errors "$MODEL_SOURCE" "$src"
            ;;
        oss://*)
            # Credentials of the build VM's RAM role (alicloud_build_ram_role).
            aliyun configure set --profile bake --mode EcsRamRole \
                --ram-role-name "$(curl -fsS http://100.100.100.200/latest/meta-data/ram/security-credentials/)" \
                --region "$(curl -fsS http://100.100.100.200/latest/meta-data/region-id)"
            aliyun --profile bake oss cp "$MODEL_SOURCE" "$src" $([[ $MODEL_SOURCE == */ ]] && echo --recursive)
            ;;
        /*)
            [[ -e "$MODEL_SOURCE" ]] || die "model_source $MODEL_SOURCE does not exist on the build VM"
            cp -a "$MODEL_SOURCE" "$src"
            ;;
        *)
            die "model_source must be an https://, s3:// or oss:// URL or an absolute path, not $MODEL_SOURCE"
            ;;
    esac
    if [[ -n "$MODEL_SHA256" ]]; then
        [[ -f "$src" ]] || die "model_sha256 is set but $MODEL_SOURCE is a directory"
        echo "$MODEL_SHA256  $src" | sha256sum --check --strict - >/dev/null \
            || die "SHA-256 of $MODEL_SOURCE is not $MODEL_SHA256"
        log "model checksum verified"
    fi

    local unpacked="$work/unpacked"
    mkdir -p "$unpacked"
    case "$name" in
        *.tar.gz | *.tgz) tar -xzf "$src" -C "$unpacked" ;;
        *.tar) tar -xf "$src" -C "$unpacked" ;;
        *.zip) unzip -q "$src" -d "$unpacked" ;;
        *)
            if [[ -d "$src" ]]; then
                cp -a "$src/." "$unpacked/"
            else
                cp -a "$src" "$unpacked/"
            fi
            ;;
    esac
    # An archive holding one top-level folder: use the folder's contents.
    local entries
    mapfile -t entries < <(find "$unpacked" -mindepth 1 -maxdepth 1)
    if [[ ${#entries[@]} -eq 1 && -d "${entries[0]}" ]]; then
        unpacked="${entries[0]}"
    fi
    [[ -n "$(ls -A "$unpacked")" ]] || die "the model from $MODEL_SOURCE is empty"

    rm -rf "$MODEL_DIR"
    mkdir -p "$MODEL_ROOT"
    cp -a "$unpacked" "$MODEL_DIR"
    echo "$MODEL_VERSION" > "$MODEL_DIR/.model-version"
    # Same weights on every node, never edited in place: root-owned and read-only.
    chown -R root:root "$MODEL_DIR"
    chmod -R a-w,a+rX "$MODEL_DIR"
    rm -rf "$work"
    log "model $MODEL_VERSION installed in $MODEL_DIR ($(du -sh "$MODEL_DIR" | cut -f1))"
}

# ------------------------------------------------------------------------------------- containers
pull_images() {
    log "pulling $NODE_IMAGE and $DCGM_EXPORTER_IMAGE"
    docker pull "$NODE_IMAGE"
    docker pull "$DCGM_EXPORTER_IMAGE"
}

# ------------------------------------------------------------------------------------- node agent
install_agent() {
    local wheels=("$AGENT_DIR"/gpu_autoscaler-*.whl)
    [[ -f "${wheels[0]}" ]] || die "no gpu_autoscaler wheel in $AGENT_DIR (build it: see README.md, node_agent_wheel_dir)"
    log "installing the node agent from ${wheels[0]##*/}"
    python3 -m venv "$AGENT_VENV"
    "$AGENT_VENV/bin/pip" install --quiet --upgrade pip
    "$AGENT_VENV/bin/pip" install --quiet "${wheels[0]}"
    "$AGENT_VENV/bin/autoscaler" node-agent --help >/dev/null || die "the node agent does not run"
}

# ----------------------------------------------------------------------------------- node service
install_service() {
    log "installing the node and exporter services"
    install -d -m 0755 "$LIB_DIR" "$CONF_DIR" /usr/local/share/asr-node
    install -m 0755 "$ASSETS_DIR/asr-node-ctl" "$LIB_DIR/asr-node-ctl"
    install -m 0644 "$ASSETS_DIR/asr-node.service" /etc/systemd/system/asr-node.service
    install -m 0644 "$ASSETS_DIR/asr-node-agent.service" /etc/systemd/system/asr-node-agent.service
    install -m 0644 "$ASSETS_DIR/dcgm-exporter.service" /etc/systemd/system/dcgm-exporter.service
    install -m 0644 "$ASSETS_DIR/user-data.example.yaml" /usr/local/share/asr-node/user-data.example.yaml

    cat > "$CONF_DIR/node.env" <<EOF
# Baked by provision.sh; per-instance settings go to $CONF_DIR/instance.env (user data).
CLOUD=$CLOUD
MODEL_VERSION=$MODEL_VERSION
MODEL_DIR=$MODEL_DIR
NODE_IMAGE=$NODE_IMAGE
DCGM_EXPORTER_IMAGE=$DCGM_EXPORTER_IMAGE
NODE_PORT=$NODE_PORT
ASR_SERVER_PORT=$ASR_SERVER_PORT
NODE_STREAMS=$NODE_STREAMS
NODE_MAX_QUEUE=$NODE_MAX_QUEUE
AGENT_PROBE_PATH=$AGENT_PROBE_PATH
AGENT_EXTRA_ARGS=
GPU_DEVICE=0
NODE_STOP_GRACE_SECONDS=$NODE_STOP_GRACE_SECONDS
EOF
    chmod 0644 "$CONF_DIR/node.env"
    echo "$MODEL_VERSION" > "$CONF_DIR/model-version"

    install -d -m 0755 /etc/systemd/system/asr-node.service.d
    cat > /etc/systemd/system/asr-node.service.d/10-stop-timeout.conf <<EOF
[Service]
# The container's grace period plus time for docker itself.
TimeoutStopSec=$((NODE_STOP_GRACE_SECONDS + 30))
EOF
    install -d -m 0755 /etc/systemd/system/asr-node-agent.service.d
    cat > /etc/systemd/system/asr-node-agent.service.d/10-stop-timeout.conf <<EOF
[Service]
# The agent's drain (--drain-timeout) plus a margin.
TimeoutStopSec=$((NODE_STOP_GRACE_SECONDS + 30))
EOF

    cat > /usr/local/share/asr-node/README.md <<EOF
# ASR node image ($MODEL_VERSION)

- asr-node.service runs $NODE_IMAGE on GPU \$GPU_DEVICE (default 0) with the model read-only from
  $MODEL_DIR, serving on 127.0.0.1:\$ASR_SERVER_PORT (default $ASR_SERVER_PORT) only. Logs: journalctl -u asr-node.
- asr-node-agent.service (the node agent) serves the node port \$NODE_PORT (default $NODE_PORT):
  it proxies to the ASR server, runs at most \$NODE_STREAMS transcriptions at once, queues up to
  \$NODE_MAX_QUEUE, and answers /healthz and /metrics. Check it: curl -i localhost:$NODE_PORT/healthz;
  curl -s localhost:$NODE_PORT/metrics | grep ^asr_. Logs: journalctl -u asr-node-agent.
- dcgm-exporter.service exports GPU metrics on :9400.
- Settings: $CONF_DIR/node.env (baked), $CONF_DIR/instance.env (user data; see
  user-data.example.yaml): ASR_HISTORY_DSN or ASR_HISTORY_DSN_SECRET (the pool's PostgreSQL),
  ASR_HISTORY=off, NODE_PORT, GPU_DEVICE.
EOF

    systemctl daemon-reload
    systemctl enable asr-node.service asr-node-agent.service dcgm-exporter.service
}

# ---------------------------------------------------------------------------------------- cleanup
clean_up() {
    log "cleaning up"
    if [[ $PKG == apt ]]; then
        apt-get clean
        rm -rf /var/lib/apt/lists/*
    else
        dnf clean all
    fi
    rm -rf /tmp/asr-model-upload "$ASSETS_DIR" "$AGENT_DIR"
    # Each instance must run cloud-init (its user data) and get its own machine id.
    if command -v cloud-init >/dev/null; then
        cloud-init clean --logs
    fi
    truncate -s 0 /etc/machine-id
    rm -f /var/lib/dbus/machine-id
}

install_base
install_gpu_runtime
install_cloud_cli
fetch_model
pull_images
install_agent
install_service
clean_up
log "done: model $MODEL_VERSION, node image $NODE_IMAGE"
