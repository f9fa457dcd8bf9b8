#!/usr/bin/env bash
# Install the Debian packages some tests and datasets need:  bash scripts/install_debian.sh WHAT [WHAT ...]
#   browser   chromium, chromium-driver and a font (tests/test_ui.py drives the MLflow UI headless)
#   latex     pdflatex (texlive-latex-base) and booktabs (texlive-latex-recommended) for the LaTeX table test
#   datasets  dataset-fashion-mnist: Fashion-MNIST's IDX files under /usr/share/datasets/fashion-mnist/
# Idempotent and quiet: does nothing for what is there. Needs root and apt; without them, or when an install
# fails, it says so and exits 0 (the tests that need it then skip, saying why).
set -uo pipefail
present() {
    case "$1" in
        browser) [ -x /usr/bin/chromium ] ;;
        latex) command -v pdflatex >/dev/null 2>&1 && kpsewhich booktabs.sty >/dev/null 2>&1 ;;
        datasets) [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] ;;
    esac
}
declare -A PACKAGES=([browser]="chromium chromium-driver fonts-liberation"
                     [latex]="texlive-latex-base texlive-latex-recommended"
                     [datasets]="dataset-fashion-mnist")
updated=""
for what in "$@"; do
    if [ -z "${PACKAGES[$what]+set}" ]; then
        echo "install_debian: unknown '$what' (expected one of: ${!PACKAGES[*]})" >&2
        exit 2
    fi
    present "$what" && continue
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "install_debian: needs root and apt-get: ${PACKAGES[$what]} not installed" >&2
        continue
    fi
    log=$(mktemp)
    export DEBIAN_FRONTEND=noninteractive
    if { [ -n "$updated" ] || apt-get -o DPkg::Lock::Timeout=300 update -qq >"$log" 2>&1; } \
            && apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends ${PACKAGES[$what]} >>"$log" 2>&1 \
            && present "$what"; then
        updated=1
        echo "install_debian: installed ${PACKAGES[$what]}"
    else
        echo "install_debian: apt-get could not install ${PACKAGES[$what]}:" >&2
        tail -n 5 "$log" >&2
    fi
    rm -f "$log"
done
exit 0
