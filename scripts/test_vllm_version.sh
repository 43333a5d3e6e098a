#!/usr/bin/env bash
# Run the scheduler and unit tests against another vLLM release, in a separate
# import root: its wheel is installed (no dependencies) under
# .vllm-versions/<version>/ and put first on PYTHONPATH, so `import vllm` is
# that release while torch and everything else come from .venv.
#
#   scripts/test_vllm_version.sh path/to/vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl
#
# A CUDA wheel imports on a CPU machine with VLLM_TARGET_DEVICE=cpu (vLLM's own
# switch): its scheduler, config and executors are pure Python. Its compiled
# kernels are for CUDA, so no engine runs: tests/e2e is not run here.
# Needs `make setup` first, and the network once (pip fetches the few pure-
# Python packages the release adds over 0.32, listed in EXTRA below).
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=${1:?usage: $0 VLLM_WHEEL [pytest args...]}
shift
version=$(basename "$wheel" | cut -d- -f2)
root=.vllm-versions/$version
EXTRA="orjson"  # imported by vLLM 0.33's API server modules, absent from 0.32's deps
if [ ! -f "$root/.done" ]; then
    rm -rf "$root"
    .venv/bin/python -m pip install -q --no-deps --target "$root" "$wheel" $EXTRA
    touch "$root/.done"
fi
export PYTHONPATH="$PWD/$root" VLLM_TARGET_DEVICE=cpu MEDHA_EXPECT_VLLM="$version"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ $# -gt 0 ] || set -- tests/sched tests/unit
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
