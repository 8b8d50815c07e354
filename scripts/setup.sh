#!/usr/bin/env bash
# Installs what the hub, agent, simulator and tests need; safe to run again (does nothing twice).
# Debian packages with apt-get (as root, or through sudo), Python packages into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# caddy: the TLS proxy example (docker/Caddyfile) is checked with it; fonts-noto-cjk: headless Chromium
# (tests, screenshots) draws the Chinese center and camera names with it, not as empty boxes.
APT_PACKAGES=(
  python3 python3-venv python3-pip python3-gi python3-gst-1.0
  ffmpeg gstreamer1.0-tools gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x
  iproute2 postgresql chromium prometheus sip-tester caddy fonts-noto-cjk
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# Every part (pyproject.toml's extras): the demo runs hub, agent and simulator; the tests need all.
EXTRAS="hub,agent,sim,dev"
stamp=".venv/.installed-$({ cat pyproject.toml; echo "$EXTRAS"; } | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[$EXTRAS]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
