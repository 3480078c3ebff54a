#!/usr/bin/env bash
# Set up a Raspberry Pi (64-bit Raspberry Pi OS or Debian, Python 3.10+) to run `edgekit bench` and
# `edgekit eval` on exported bundles. Installs the light runtime only: no torch.
# Usage: bash bootstrap.sh [path-or-requirement-of-edgekit]   (default: edgekit from PyPI)
# Run it as your user (it uses sudo for apt) or as root (no sudo needed).
set -euo pipefail
target="${1:-edgekit}"
if [ "$(uname -m)" != "aarch64" ]; then
  echo "error: this is $(uname -m); edgekit's Pi runtime needs a 64-bit OS (aarch64)" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "error: installing packages needs root; run this script as root or install sudo" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q
"${as_root[@]}" apt-get install -y -q python3-venv python3-pip libraspberrypi-bin \
  || "${as_root[@]}" apt-get install -y -q python3-venv python3-pip
python3 -m venv "$HOME/edgekit-venv"
"$HOME/edgekit-venv/bin/pip" install -q --upgrade pip
"$HOME/edgekit-venv/bin/pip" install "$target"
# The performance governor keeps the clock steady while measuring (reset at reboot).
for governor in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do
  [ -e "$governor" ] || continue
  echo performance | "${as_root[@]}" tee "$governor" >/dev/null 2>&1 || true
done
"$HOME/edgekit-venv/bin/edgekit" devices show rpi4 >/dev/null
echo "edgekit is ready: $HOME/edgekit-venv/bin/edgekit bench BUNDLE --device rpi4"
