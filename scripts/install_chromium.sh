#!/usr/bin/env bash
# Headless Chromium for the card rendering tests (tests/test_cards.py, which calls this when it
# finds no browser). Prints the browser's path. Order: $TRAINFLOW_CHROMIUM, then chromium,
# chromium-browser or google-chrome on PATH (GitHub's Ubuntu runners ship google-chrome), else
# Debian's `chromium` from apt-get (as root, or through sudo).
# Usage: scripts/install_chromium.sh        (idempotent)
set -euo pipefail

find_browser() {
  if [ -n "${TRAINFLOW_CHROMIUM:-}" ] && [ -x "$TRAINFLOW_CHROMIUM" ]; then
    echo "$TRAINFLOW_CHROMIUM"
    return 0
  fi
  local name
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

if ! find_browser; then
  echo "[install_chromium] installing Debian's chromium with apt-get" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  find_browser
fi
