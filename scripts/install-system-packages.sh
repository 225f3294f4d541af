#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo run as plain processes: nginx (full, not the
# nginx-light dummy), prometheus (with promtool), prometheus-alertmanager (the alert end-to-end
# test), espeak-ng (the real-ASR tests synthesise the speech they transcribe with it) and chromium
# (the dry-run report is opened in a real headless browser: screenshot, no page errors). Their
# packages' own services must not start on
# the default ports, so a policy-rc.d that denies every service start is in place during the install.
set -euo pipefail
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
policy=/usr/sbin/policy-rc.d
restore=""
if [ -e "$policy" ]; then restore=$(mktemp); $SUDO cp "$policy" "$restore"; fi
printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
$SUDO chmod +x "$policy"
trap 'if [ -n "$restore" ]; then $SUDO cp "$restore" "$policy"; else $SUDO rm -f "$policy"; fi' EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "installed: ${need[*]}"
