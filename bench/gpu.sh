#!/usr/bin/env bash
# The GPU suite in one command, run as is on a machine with a CUDA GPU (under 8 minutes):
#     bench/gpu.sh                         # JSON in runs/bench/, a table on stdout
#     bench/gpu.sh --device cpu --small --threads 1   # the same code paths at tiny sizes, anywhere
# Options are bench/gpu.py's (--help). PYTHON picks the interpreter (default: .venv/bin/python
# if there is one, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" bench/gpu.py "$@"
