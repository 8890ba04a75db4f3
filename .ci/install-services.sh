#!/usr/bin/env bash
# Install the real services the integration tests start: Debian's Prometheus (with promtool)
# and Alertmanager (binary `prometheus-alertmanager`, with amtool), and Debian's `chromium`,
# the headless browser that opens the backtest report (tests/integration/test_report_browser.py).
# Idempotent: a second run finds them all installed.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

have_all() {
  command -v prometheus >/dev/null 2>&1 \
    && command -v promtool >/dev/null 2>&1 \
    && command -v prometheus-alertmanager >/dev/null 2>&1 \
    && command -v amtool >/dev/null 2>&1 \
    && command -v chromium >/dev/null 2>&1
}

if have_all; then
  echo "install-services: prometheus, promtool, prometheus-alertmanager, amtool, chromium already present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

$SUDO apt-get update -q
# --no-install-recommends keeps the install small (no web console extras, no node exporters).
$SUDO apt-get install -y -q --no-install-recommends prometheus prometheus-alertmanager chromium

# The Debian packages start system services where an init system runs; tests start their own
# instances on free loopback ports, so stop the packaged ones if they were started (best effort:
# containers and CI machines usually have no systemd, and then there is nothing to stop).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl stop prometheus prometheus-alertmanager 2>/dev/null || true
fi

if ! have_all; then
  echo "install-services: binaries still missing after install" >&2
  exit 1
fi
echo "install-services: ok"
prometheus --version 2>&1 | head -1
prometheus-alertmanager --version 2>&1 | head -1
chromium --version 2>&1 | head -1
