#!/usr/bin/env bash
# The dashboard in a real browser: Debian's chromium (installed here when missing) driven by
# Playwright (from PyPI, in a venv of its own; its own browser download is not used) against
# orchd. Runs the operator's and the viewer's journeys, regenerates the screenshots under
# docs/, then measures the cold render of the overview and the task list with 100,000 tasks
# in the store (figures printed and written to $target/dashboard-figures.json).
#
# Usage: .ci/dashboard.sh [path/to/orchd]   (default: $CARGO_TARGET_DIR or target, debug)
# Environment: DASHBOARD_VENV (where the venv lives), DASHBOARD_TASKS (default 100000; 0 skips
# the measurement).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
orchd=$(realpath "${1:-$target/debug/orchd}")
venv=$(realpath -m "${DASHBOARD_VENV:-$target/dashboard-venv}")
version=1.65.2

# Debian packages this needs: the browser, and Python's venv module.
packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
if [ ${#packages[@]} -gt 0 ]; then
  sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi
chromium --version 2>/dev/null || true

if ! "$venv/bin/python" -c "import playwright, sys; from importlib.metadata import version; sys.exit(version('playwright') != '$version')" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "playwright==$version"
fi

"$venv/bin/python" orch-http/ui/e2e/dashboard.py "$orchd" --screenshots docs \
  --figures "$target/dashboard-figures.json" --tasks "${DASHBOARD_TASKS:-100000}"
