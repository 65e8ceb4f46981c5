#!/usr/bin/env bash
# Installs Debian's chromium for the web page test (tests/serve/test_page.py), where it is
# missing. The test drives it with Playwright from PyPI at /usr/bin/chromium (or
# $SCRATCHLM_BROWSER): no `playwright install` download. Never fails: without root or
# apt-get it says why, and the page test skips naming this script.
set -uo pipefail
browser=${SCRATCHLM_BROWSER:-/usr/bin/chromium}

if [ -x "$browser" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no $browser and no apt-get here: install chromium yourself" \
    "to run the page test (it skips without it)" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_browser: no $browser; installing it needs root:" \
    "sudo apt-get install -y chromium (the page test skips until then)" >&2
  exit 0
fi
echo "install_browser: installing Debian's chromium for the page test (apt-get, a few minutes)" >&2
if apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; then
  echo "install_browser: done" >&2
else
  echo "install_browser: apt-get could not install chromium (see above); the page test skips" >&2
fi
exit 0
