#!/usr/bin/env bash
# The README's first command: set up (once), then `autoscaler demo` with any arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/autoscaler demo "$@"
