#!/usr/bin/env bash
# Installs what the chat page's browser test needs: Debian's chromium and chromium-driver (apt) and
# selenium (in the venv; it is also in the `test` extra). Idempotent: does nothing when they are
# there. Exit status: 0 installed (or already there), 2 this machine cannot install them (not
# root, no apt-get, or no such packages), 1 the installation failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
log() { echo "[chromium] $*" >&2; }

have_browser() {
  { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } &&
    command -v chromedriver >/dev/null 2>&1
}

if have_browser; then
  log "chromium and chromedriver already installed"
else
  if ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get: install chromium and chromedriver by hand to run the browser test"
    exit 2
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      SUDO=sudo
    else
      log "not root (and no password-less sudo): cannot apt-get install chromium chromium-driver"
      exit 2
    fi
  else
    SUDO=
  fi
  if ! apt-cache show chromium chromium-driver >/dev/null 2>&1; then
    $SUDO apt-get update -qq || { log "apt-get update failed"; exit 1; }
    apt-cache show chromium chromium-driver >/dev/null 2>&1 ||
      { log "apt knows no chromium / chromium-driver packages here"; exit 2; }
  fi
  log "apt-get install chromium chromium-driver"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null ||
    { log "apt-get install failed"; exit 1; }
  have_browser || { log "installed, but chromium / chromedriver are not on PATH"; exit 1; }
fi

if ! "$PY" -c "import selenium" 2>/dev/null; then
  log "pip install selenium"
  "$PY" -m pip install --quiet --disable-pip-version-check "selenium>=4.10" || { log "pip install selenium failed"; exit 1; }
fi
log "ready: $(chromium --version 2>/dev/null || chromium-browser --version), $(chromedriver --version | head -n1)"
