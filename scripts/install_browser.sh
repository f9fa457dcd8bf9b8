#!/usr/bin/env bash
# Install Debian's headless browser for the UI test (tests/test_ui.py): chromium and chromium-driver.
# Idempotent and quiet: does nothing when /usr/bin/chromium is there. Needs root and apt; without them
# (or when the install fails) it says so and exits 0, and the browser test skips, saying why.
set -uo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: not root or no apt-get: chromium not installed; the browser test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq >/dev/null \
        && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
    echo "install_browser: installed $(/usr/bin/chromium --version 2>/dev/null)"
else
    echo "install_browser: apt-get install chromium chromium-driver failed; the browser test will be skipped" >&2
fi
exit 0
