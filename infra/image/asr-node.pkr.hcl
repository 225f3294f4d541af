# The ASR node image: one Fun-ASR node per VM, one GPU per node, model weights baked in.
#
# Builds the same image on AWS (amazon-ebs → an AMI) and Alibaba Cloud (alicloud-ecs → a custom
# image). Both are tagged `autoscaler:model-version = var.model_version`, the tag the autoscaler's
# providers look images up by when a pool policy says
#
#   launch:
#     model_version: <the same string>
#     image: { lookup_by_model_version: true }
#
# See README.md beside this file for the variables and the build commands.

packer {
  required_version = ">= 1.9.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
    alicloud = {
      source  = "github.com/hashicorp/alicloud"
      version = ">= 1.1.0"
    }
  }
}

# ------------------------------------------------------------------------------------------ the model
variable "model_version" {
  type        = string
  description = "Model version the image serves; must equal the pool policy's launch.model_version."
  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", var.model_version))
    error_message = "The model_version must be 1-128 characters of letters, digits, '.', '_' or '-'."
  }
}

variable "model_source" {
  type        = string
  description = <<-EOT
    Where the build VM fetches the Fun-ASR-Nano-2512 weights at bake time: an https:// URL, an
    s3:// URL (read with the build instance profile), an oss:// URL (read with the build RAM role),
    or an absolute path on the build VM (a file uploaded from model_upload_dir lands under
    /tmp/asr-model-upload/). A .tar, .tar.gz/.tgz or .zip archive is unpacked; a directory is copied.
  EOT
}

variable "model_sha256" {
  type        = string
  default     = ""
  description = "SHA-256 of the file model_source names; the bake fails on a mismatch. Empty: not checked."
}

variable "model_upload_dir" {
  type        = string
  default     = ""
  description = "A local directory uploaded to /tmp/asr-model-upload/ on the build VM (default: ./model-upload)."
}

# --------------------------------------------------------------------------------- node and exporter
variable "node_image" {
  type        = string
  description = "Container image of the ASR node service, pulled at bake time (e.g. registry.example.com/fun-asr-node:1.4.0)."
}

variable "dcgm_exporter_image" {
  type        = string
  default     = "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04"
  description = "NVIDIA DCGM exporter container image (GPU metrics on :9400 for Prometheus)."
}

variable "node_port" {
  type        = number
  default     = 7860
  description = "Host port the node serves on by default (the policy's launch.port); user data may override."
}

variable "node_stop_grace_seconds" {
  type        = number
  default     = 300
  description = "How long `systemctl stop` lets in-flight transcriptions finish (match the policy's drain.timeout)."
}

# ------------------------------------------------------------------------------------- the node agent
variable "node_agent_wheel_dir" {
  type        = string
  default     = ""
  description = "A local directory holding the gpu_autoscaler wheel (pip wheel --no-deps -w <dir> .), uploaded to /tmp/asr-agent/ (default: ./agent-wheel)."
}

variable "asr_server_port" {
  type        = number
  default     = 7861
  description = "Internal port the ASR server container is published on (127.0.0.1 only); the node agent owns node_port."
}

variable "node_streams" {
  type        = number
  default     = 10
  description = "Transcriptions the node agent lets reach the GPU at once (the pool's instance_types[].streams)."
}

variable "node_max_queue" {
  type        = number
  default     = 100
  description = "Transcriptions the node agent queues beyond node_streams before answering 429."
}

variable "agent_probe_path" {
  type        = string
  default     = "/"
  description = "Readiness path on the ASR server the agent asks (200 = model loaded); /healthz is 200 only then."
}

variable "image_name_prefix" {
  type    = string
  default = "asr-node"
}

variable "root_volume_gb" {
  type        = number
  default     = 100
  description = "Root disk size: OS, container images and the model weights."
}

# ------------------------------------------------------------------------------------------------ AWS
variable "aws_region" {
  type    = string
  default = "us-east-1"
}

variable "aws_build_instance_type" {
  type        = string
  default     = "g5.xlarge"
  description = "Instance type of the build VM (a GPU type lets provision.sh check the driver)."
}

variable "aws_source_ami_name" {
  type        = string
  default     = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
  description = "Name filter of the base AMI: an Ubuntu image with the NVIDIA driver and Docker."
}

variable "aws_source_ami_owner" {
  type    = string
  default = "amazon"
}

variable "aws_subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build VM; empty: the default VPC."
}

variable "aws_build_instance_profile" {
  type        = string
  default     = ""
  description = "Instance profile of the build VM (needed for an s3:// model_source)."
}

variable "aws_ami_regions" {
  type        = list(string)
  default     = []
  description = "Other regions to copy the AMI to (copies keep the tags)."
}

# -------------------------------------------------------------------------------------- Alibaba Cloud
variable "alicloud_region" {
  type    = string
  default = "cn-hangzhou"
}

variable "alicloud_build_instance_type" {
  type        = string
  default     = "ecs.gn7i-c8g1.2xlarge"
  description = "Instance type of the build VM (one A10 GPU)."
}

variable "alicloud_source_image" {
  type        = string
  default     = "ubuntu_22_04_x64_20G_alibase_20240926.vhd"
  description = "Base image id; provision.sh installs Docker and the NVIDIA container toolkit if missing (the NVIDIA driver must be in the image or installed by the instance type's GPU-driver option)."
}

variable "alicloud_vswitch_id" {
  type        = string
  default     = ""
  description = "VSwitch of the build VM; empty: Packer creates a temporary VPC."
}

variable "alicloud_build_ram_role" {
  type        = string
  default     = ""
  description = "RAM role of the build VM (needed for an oss:// model_source)."
}

locals {
  build_time = formatdate("YYYYMMDDhhmmss", timestamp())
  image_name = "${var.image_name_prefix}-${var.model_version}-${local.build_time}"
  upload_dir = var.model_upload_dir != "" ? var.model_upload_dir : "${path.root}/model-upload"
  agent_dir  = var.node_agent_wheel_dir != "" ? var.node_agent_wheel_dir : "${path.root}/agent-wheel"

  # The tag the providers look images up by (autoscaler.domain.TAG_MODEL_VERSION), plus the
  # managed-by tag (autoscaler.domain.TAG_MANAGED_BY / MANAGED_BY_VALUE).
  image_tags = {
    "autoscaler:model-version" = var.model_version
    "managed-by"               = "gpu-autoscaler"
    "Name"                     = local.image_name
    "asr:node-image"           = var.node_image
    "asr:built-at"             = local.build_time
  }
}

source "amazon-ebs" "asr_node" {
  region        = var.aws_region
  instance_type = var.aws_build_instance_type
  subnet_id     = var.aws_subnet_id != "" ? var.aws_subnet_id : null
  iam_instance_profile = var.aws_build_instance_profile != "" ? var.aws_build_instance_profile : null

  source_ami_filter {
    filters = {
      name                = var.aws_source_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.aws_source_ami_owner]
    most_recent = true
  }
  ssh_username = "ubuntu"

  ami_name        = local.image_name
  ami_description = "Fun-ASR node, model ${var.model_version}, node image ${var.node_image}"
  ami_regions     = var.aws_ami_regions
  tags            = local.image_tags
  snapshot_tags   = local.image_tags
  run_tags        = { "Name" = "packer-${local.image_name}" }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = var.root_volume_gb
    volume_type           = "gp3"
    delete_on_termination = true
  }

  # Nodes launched from the AMI use IMDSv2 only.
  imds_support = "v2.0"
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
  }
}

source "alicloud-ecs" "asr_node" {
  region        = var.alicloud_region
  instance_type = var.alicloud_build_instance_type
  source_image  = var.alicloud_source_image
  vswitch_id    = var.alicloud_vswitch_id != "" ? var.alicloud_vswitch_id : null
  ram_role_name = var.alicloud_build_ram_role != "" ? var.alicloud_build_ram_role : null
  ssh_username  = "root"

  image_name        = local.image_name
  image_description = "Fun-ASR node, model ${var.model_version}, node image ${var.node_image}"
  tags              = local.image_tags

  internet_charge_type       = "PayByTraffic"
  internet_max_bandwidth_out = 100
  io_optimized               = true
  system_disk_mapping {
    disk_category = "cloud_essd"
    disk_size     = var.root_volume_gb
  }
}

build {
  name    = "asr-node"
  sources = ["source.amazon-ebs.asr_node", "source.alicloud-ecs.asr_node"]

  # The file provisioner uploads a directory's contents only into a directory that exists.
  provisioner "shell" {
    inline = ["mkdir -p /tmp/asr-image /tmp/asr-model-upload /tmp/asr-agent"]
  }

  # The systemd units, the history-DSN helper and the example user data.
  provisioner "file" {
    source      = "${path.root}/files/"
    destination = "/tmp/asr-image"
  }

  # The node agent's wheel (see node_agent_wheel_dir).
  provisioner "file" {
    source      = "${local.agent_dir}/"
    destination = "/tmp/asr-agent"
  }

  # Optional local model archive (see model_source).
  provisioner "file" {
    source      = "${local.upload_dir}/"
    destination = "/tmp/asr-model-upload"
  }

  provisioner "shell" {
    script          = "${path.root}/provision.sh"
    execute_command = "chmod +x {{ .Path }}; sudo -E bash '{{ .Path }}'"
    environment_vars = [
      "MODEL_VERSION=${var.model_version}",
      "MODEL_SOURCE=${var.model_source}",
      "MODEL_SHA256=${var.model_sha256}",
      "NODE_IMAGE=${var.node_image}",
      "DCGM_EXPORTER_IMAGE=${var.dcgm_exporter_image}",
      "NODE_PORT=${var.node_port}",
      "NODE_STOP_GRACE_SECONDS=${var.node_stop_grace_seconds}",
      "ASSETS_DIR=/tmp/asr-image",
      "AGENT_DIR=/tmp/asr-agent",
      "ASR_SERVER_PORT=${var.asr_server_port}",
      "NODE_STREAMS=${var.node_streams}",
      "NODE_MAX_QUEUE=${var.node_max_queue}",
      "AGENT_PROBE_PATH=${var.agent_probe_path}",
      "CLOUD=${source.type == "amazon-ebs" ? "aws" : "alibaba"}",
    ]
  }

  # Which image each cloud got, for release notes and for pinning image.id in a policy.
  post-processor "manifest" {
    output     = "manifest.json"
    strip_path = true
    custom_data = {
      model_version = var.model_version
      node_image    = var.node_image
    }
  }
}
