#!/usr/bin/env bash
# Install what tests/test_demo_browser.py needs: Debian's `chromium` and the Python `playwright`
# package (the driver only: no `playwright install`, the test points it at /usr/bin/chromium).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
fi
. .venv/bin/activate
python -c "import playwright" 2>/dev/null || pip install -q playwright
echo "browser ready: $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium: version unknown'), playwright $(python -c 'from importlib.metadata import version; print(version("playwright"))')"
