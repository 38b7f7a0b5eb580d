#!/usr/bin/env bash
# The dashboard's real-browser test drives Debian's chromium (tests/test_dashboard_browser.py, through the
# playwright package from the test extras, which never downloads a browser of its own). This installs
# chromium from the distribution's archive with apt-get and nothing else; it does nothing if it is there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: apt-get not found; install chromium with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
