#!/usr/bin/env bash
# Create .venv and install the toolkit with its test extra, once; later calls return at once unless
# pyproject.toml changed. Sourced by scripts/test.sh, scripts/demo.sh and scripts/cache_latents.sh.
# An environment that already runs the toolkit is used as it is (an activated venv, conda, a pip install): when
# VIDTOK_VENV is unset and the active `python` imports the modules in VIDTOK_NEEDS, nothing is created.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
needs="${VIDTOK_NEEDS:-tokenizer.cache diffusion.training pipelines.sample}"
if [ -z "${VIDTOK_VENV:-}" ] && command -v python >/dev/null 2>&1 \
   && PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" python -c "import importlib, sys
for m in sys.argv[1:]: importlib.import_module(m)" $needs >/dev/null 2>&1; then
  echo "[setup] using the active environment ($(command -v python)): it already imports the toolkit" >&2
  return 0 2>/dev/null || exit 0
fi
venv="${VIDTOK_VENV:-$root/.venv}"
stamp="$venv/.vidtok-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if ! python3 -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: vidtok-lab needs python3 >= 3.10 with its venv module (found: $(python3 --version 2>&1))" >&2
  exit 2
fi
if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "warning: $(uname -sm): decord ships wheels for Linux x86_64 only; its install may fail here" >&2
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the toolkit and its dependencies into $venv (first run takes a few minutes)"
  "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
