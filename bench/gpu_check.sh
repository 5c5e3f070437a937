#!/usr/bin/env bash
# Issue 16's device check, one call on a GPU machine (<= 5 minutes on an H200):
#   bash bench/gpu_check.sh                 # venv + installs, pytest -m gpu, bench -> bench/out/gpu.json
#   bash bench/gpu_check.sh --cpu-dry-run   # here: this interpreter, TRITON_INTERPRET=1, tiny sizes
# Every step has its own timeout; a failed step is recorded in the JSON (bench_gpu's sections are
# written one by one) and the later steps still run. The JSON is copied to $OUT when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--cpu-dry-run" ]] && DRY=1
JSON=bench/out/gpu.json
LOG=bench/out/gpu_check.log
mkdir -p bench/out
: > "$LOG"
STATUS=0
step() {  # step NAME SECONDS CMD...: run with a timeout, log it, remember a failure
  local name=$1 secs=$2; shift 2
  echo "== $name (limit ${secs}s)" | tee -a "$LOG"
  local t0=$SECONDS rc=0
  timeout "$secs" "$@" >>"$LOG" 2>&1 || rc=$?
  echo "== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$LOG"
  tail -n 5 "$LOG"
  [[ $rc -eq 0 ]] || STATUS=1
  return 0
}
note_error() {  # a JSON with the error when nothing better could be written
  [[ -s "$JSON" ]] || printf '{"device": null, "versions": {}, "codecs": {}, "file_to_gpu_vs_safetensors": {}, "errors": {"%s": "failed, see bench/out/gpu_check.log"}}\n' "$1" > "$JSON"
}
finish() {
  [[ -n "${OUT:-}" ]] && cp "$JSON" "$LOG" "$OUT"/ 2>/dev/null || true
  exit "$STATUS"
}

if [[ $DRY -eq 1 ]]; then
  PY=${PYTHON:-/work/main/.venv/bin/python}
  export TRITON_INTERPRET=1
  JSON=bench/out/gpu.dryrun.json
  rm -f "$JSON"
  step build 300 "$PY" setup.py build_ext --inplace -q
  step pytest-gpu 600 "$PY" -m pytest -q -x -m gpu tests/test_gpu.py tests/test_gpu_uniform.py tests/test_gpu_device.py
  step pytest-interpreted 600 "$PY" -m pytest -q -x tests/test_gpu_uniform.py
  step bench 600 "$PY" bench/gpu_json.py --tiny --reps 1 --out "$JSON"
  note_error bench
  finish
fi

rm -f "$JSON"
PY=python3
if ! timeout 30 python3 -c "import torch, triton, numpy, pytest, hypothesis, safetensors; assert torch.cuda.is_available()" 2>/dev/null; then
  VENV=.venv-gpu   # --system-site-packages: a preinstalled CUDA torch is used where there is one
  step venv 60 python3 -m venv --system-site-packages "$VENV"
  PY=$VENV/bin/python
  WHEELS=()         # an offline machine: carry wheels in .whl/ (ignored by git)
  [[ -d .whl ]] && WHEELS=(--no-index --find-links .whl)
  step install 240 "$PY" -m pip install -q "${WHEELS[@]}" torch triton numpy pytest hypothesis pybind11 safetensors \
    zstandard msgpack tqdm setuptools wheel
fi
step install-permcodec 120 "$PY" -m pip install -q --no-build-isolation -e .
step build 120 "$PY" setup.py build_ext --inplace -q
if ! "$PY" -c "import torch, permcodec; assert torch.cuda.is_available()" >>"$LOG" 2>&1; then
  echo "no usable CUDA torch + permcodec: see $LOG" | tee -a "$LOG"
  note_error install
  STATUS=1
  finish
fi
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$LOG"
step pytest-gpu 150 "$PY" -m pytest -q -m gpu tests/test_gpu.py tests/test_gpu_uniform.py tests/test_gpu_device.py
step bench-codecs 90 "$PY" bench/gpu_json.py --only packed,plain,uniform,model --out "$JSON"
step bench-files 150 "$PY" bench/gpu_json.py --only conv13,synthetic_1b --reps 2 --out "$JSON"
note_error bench
cat "$JSON"
finish
