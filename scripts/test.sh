#!/usr/bin/env bash
# The test suite: CPU only, no network, no GPU, about 6 minutes on 2 cores. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VIDTOK_NEEDS="tokenizer.cache diffusion.training pipelines.sample pytest pytest_timeout skvideo diffusers skimage compressai" \
  source "$root/scripts/setup_env.sh"
cd "$root"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-2}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
python -m pytest tests --timeout=600 -m "not slow" "$@"  # a later -m (e.g. -m slow) replaces it
