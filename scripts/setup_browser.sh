#!/usr/bin/env bash
# Install what tests/test_demo_browser.py needs: Debian's `chromium`, a CJK font (a Chinese track's
# page draws its titles with it) and the Python `playwright` package (the driver only: no
# `playwright install`, the test points it at /usr/bin/chromium). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
fc-list :lang=zh 2>/dev/null | grep -q . || missing+=(fonts-wqy-zenhei)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
. .venv/bin/activate
python -c "import playwright" 2>/dev/null || pip install -q playwright
echo "browser ready: $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium: version unknown'), playwright $(python -c 'from importlib.metadata import version; print(version("playwright"))')"
