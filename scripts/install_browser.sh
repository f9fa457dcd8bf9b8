#!/usr/bin/env bash
# Install Debian's headless browser for the browser test (tests/test_ui.py): chromium, chromium-driver, and
# a font so pages render text. Idempotent and quiet: does nothing when /usr/bin/chromium is there. Needs
# root and apt; without them, or when the install fails, it says so and exits 0 (the browser test then
# skips, saying why).
set -uo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: needs root and apt-get: chromium not installed; the browser test will be skipped" >&2
    exit 0
fi
log=$(mktemp)
export DEBIAN_FRONTEND=noninteractive
if apt-get -o DPkg::Lock::Timeout=300 update -qq >"$log" 2>&1 \
        && apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
            chromium chromium-driver fonts-liberation >>"$log" 2>&1 \
        && [ -x /usr/bin/chromium ]; then
    echo "install_browser: installed $(/usr/bin/chromium --version 2>/dev/null)"
else
    echo "install_browser: apt-get could not install chromium; the browser test will be skipped:" >&2
    tail -n 5 "$log" >&2
fi
rm -f "$log"
exit 0
