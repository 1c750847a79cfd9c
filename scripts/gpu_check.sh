#!/usr/bin/env bash
# The GPU check: one script, under 10 minutes on one H100 / H200, everything written under one folder.
#
#   bash scripts/gpu_check.sh [OUT]        # OUT: default $OUT if set, else outputs/gpu_check-<UTC time>
#   bash scripts/gpu_check.sh --dry-run    # on a CPU machine: the GPU tests on the CPU and the benchmark commands at
#                                          # toy sizes (checks this script and the test code; measures nothing)
#
# Steps (each logged to OUT/log.txt; a failing step is recorded and the next one still runs; exit status 1 if any
# failed):
#   1. env.txt         nvidia-smi, torch / CUDA versions
#   2. pytest_gpu.txt / .xml  `pytest -m gpu` (tests/test_gpu.py): bf16 autocast Latte step finite and close to fp32, the
#                      SDPA flash kernel, torch.compile of a Latte block, the VAEs on CUDA against CPU, a 20-step
#                      train_latte.py run and a 4-video sample.py run on CUDA
#   3. bench_latte.md / .json  Latte-XL/2 training throughput and MFU: the public code's default (fp32, math
#                      attention, no compile) against ours in bf16 + SDPA, and bf16 + SDPA + torch.compile
#   4. bench_vae.md / .json    the video VAEs at 16(+1) x 256 x 256 on CUDA beside diffusers' Wan and CogVideoX
# Python: $VIDTOK_VENV/bin/python, else ./.venv/bin/python, else python3 (the toolkit and its test extra installed).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out="${1:-${OUT:-$root/outputs/gpu_check-$(date -u +%Y%m%dT%H%M%SZ)}}"
mkdir -p "$out" || { echo "error: cannot create the output folder $out" >&2; exit 2; }
venv="${VIDTOK_VENV:-$root/.venv}"
if [ -x "$venv/bin/python" ]; then py="$venv/bin/python"; else py="$(command -v python3 || command -v python)"; fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
log="$out/log.txt"
failed=()

step() {  # step NAME SECONDS OUTFILE CMD...: run CMD with a time limit, output to OUTFILE and the log
  local name="$1" limit="$2" to="$3"; shift 3
  echo "== $(date -u +%H:%M:%S) $name (limit ${limit}s): $*" | tee -a "$log"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$to" >>"$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

if [ "$dry" = 1 ]; then
  export VIDTOK_GPU_TESTS_DEVICE=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
  device=cpu latte_args=(--presets Latte-tiny/2 --frames 4 --size 8 --batch 2 --warmup 1 --steps 1 --repeat 1
                         --rows baseline ours-sdpa-fp32 --threads 2)
  vae_args=(--vae plain-tiny vcvae-tiny deco-tiny --peers --frames 8 --size 32)
else
  device=cuda latte_args=(--presets Latte-XL/2 --rows baseline ours-sdpa-bf16 ours-sdpa-bf16-compile --compile
                          --warmup 3 --steps 10 --repeat 2)
  vae_args=(--vae vcvae deco deco-compact plain --frames 16 --size 256 --warmup 1 --repeat 2)
fi

{ echo "gpu_check $(date -u +%FT%TZ), dry run: $dry, python: $py"; git rev-parse HEAD 2>/dev/null
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available",
torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
} >"$out/env.txt" 2>&1
if [ "$dry" = 0 ] && ! "$py" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "error: no CUDA device visible to $py (see $out/env.txt); use --dry-run on a CPU machine" >&2
  exit 2
fi

# limits: 200 + 220 + 180 s = 10 minutes at most; expected about 7 on an H100 / H200
step pytest-gpu 200 "$out/pytest_gpu.txt" "$py" -m pytest tests/test_gpu.py -m gpu -q -rs -p no:cacheprovider \
  --junitxml="$out/pytest_gpu.xml"
step bench-latte 220 "$out/bench_latte.md" "$py" benchmarks/bench_latte.py --device "$device" "${latte_args[@]}" \
  --json "$out/bench_latte.json"
step bench-vae 180 "$out/bench_vae.md" "$py" benchmarks/bench_vae.py --device "$device" "${vae_args[@]}" \
  --json "$out/bench_vae.json"

if [ "${#failed[@]}" -gt 0 ]; then
  echo "gpu_check: FAILED steps: ${failed[*]} (details in $log)" | tee -a "$log"
  exit 1
fi
echo "gpu_check: all steps passed; results in $out" | tee -a "$log"
