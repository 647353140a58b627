#!/usr/bin/env bash
# GPU throughput table of the reference run's network work (training, HPA U-Net, test ensemble).
#   bash benchmarks/gpu.sh            # on a GPU machine: one table, at most 8 minutes
#   bash benchmarks/gpu.sh --smoke    # tiny models on CPU (seconds), what the tests run
# PYTHON picks the interpreter (default: the project's .venv, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$py" "$here/gpu_bench.py" "$@"
