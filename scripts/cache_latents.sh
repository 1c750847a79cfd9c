#!/usr/bin/env bash
# Pixels -> latent shards: a thin wrapper over `python -m tokenizer.cache` (all options: --help).
#   bash scripts/cache_latents.sh --vae NAME [--ckpt DIR] --data CONFIG [--out DIR] [key=value ...]
#   bash scripts/cache_latents.sh --vae sd --vae-path sd-vae-ft-ema --data CONFIG ...   (Latte's SD-VAE, frame-wise)
#   bash scripts/cache_latents.sh --verify --out DIR
# One process (the CPU, or one GPU) by default. NPROC=N starts N ranks that each encode their own shards, with
# `accelerate launch --multi_gpu` when CUDA is available, else `torchrun` (CPU processes, gloo): the same cache
# either way. Re-running the same command finishes an interrupted cache. Paths are relative to where you call it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
nproc="${NPROC:-1}"
if ! [[ "$nproc" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NPROC must be a positive integer, got '$nproc'" >&2
  exit 2
fi
if [ "$nproc" -gt 1 ]; then
  if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    exec accelerate launch --multi_gpu --num_processes "$nproc" --num_machines 1 --mixed_precision no \
      --dynamo_backend no -m tokenizer.cache "$@"
  fi
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  exec torchrun --standalone --nproc_per_node "$nproc" -m tokenizer.cache "$@"
fi
exec python -m tokenizer.cache "$@"
