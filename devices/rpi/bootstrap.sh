#!/usr/bin/env bash
# Set up a Raspberry Pi (64-bit Raspberry Pi OS, Python 3.10+) to run `edgekit bench` and
# `edgekit eval` on exported bundles. Installs the light runtime only: no torch.
# Usage: bash bootstrap.sh [path-or-requirement-of-edgekit]   (default: edgekit from PyPI)
set -euo pipefail
target="${1:-edgekit}"
if [ "$(uname -m)" != "aarch64" ]; then
  echo "error: this is $(uname -m); edgekit's Pi runtime needs a 64-bit OS (aarch64)" >&2
  exit 1
fi
sudo apt-get update -q
sudo apt-get install -y -q python3-venv python3-pip libraspberrypi-bin || sudo apt-get install -y -q python3-venv python3-pip
python3 -m venv "$HOME/edgekit-venv"
"$HOME/edgekit-venv/bin/pip" install --upgrade pip
"$HOME/edgekit-venv/bin/pip" install "$target"
# The performance governor keeps the clock steady while measuring (reset at reboot).
if [ -w /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor ] || command -v sudo >/dev/null; then
  echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor >/dev/null || true
fi
"$HOME/edgekit-venv/bin/edgekit" devices show rpi4 >/dev/null
echo "edgekit is ready: $HOME/edgekit-venv/bin/edgekit bench BUNDLE --device rpi4"
