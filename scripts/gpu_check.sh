#!/usr/bin/env bash
# The GPU check (issue: GPU nodes). On a single-GPU node with no network:
#   scripts/gpu_check.sh OUT_DIR            (needs `.gpu/` from scripts/gpu_carry.sh carried along)
# On a CPU machine, end to end with tiny sizes:
#   scripts/gpu_check.sh OUT_DIR --dry
# Installs the carried DeepSpeed (ops JIT-free: the learner uses torch's AdamW) into /tmp/site,
# then runs scripts/gpu_check.py; the table is printed last and results.json written to OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [--dry]}; shift
if [[ " $* " != *" --dry "* ]]; then
  py=python3
  if ! $py -c "import deepspeed" 2>/dev/null; then
    DS_BUILD_OPS=0 $py -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
      --target /tmp/site .gpu/whl/*
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
else
  py=.venv/bin/python
  export OMP_NUM_THREADS=1
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 470 $py scripts/gpu_check.py "$out" --model-dir .gpu/smollm2 "$@"
