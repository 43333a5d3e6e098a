"""Installing medha-vllm next to a vLLM it does not support never breaks
plain vLLM: the plugin logs one warning and applies no patch; only asking for
Medha is a start-up error naming what to install. (A fresh process with
vllm.__version__ set to 0.99.0 before the plugin loads.)"""

import subprocess
import sys

SCRIPT = r'''
import sys
import vllm
vllm.__version__ = "0.99.0"
from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser
import medha_vllm.patches as patches
from medha_vllm.patches import parallel_layout

model = sys.argv[1]
parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())  # loads the plugin
print("PATCHES", {n: (patches.result_of(n) or "none") for n in patches.PATCH_MODULES})
print("LAYOUT_WRAPPED", EngineArgs.create_engine_config is not parallel_layout._ORIG.get(
    "create_engine_config", EngineArgs.create_engine_config))
ea = AsyncEngineArgs.from_cli_args(parser.parse_args(["--model", model]))
print("PARSED", ea.scheduler_cls, flush=True)
try:
    AsyncEngineArgs.from_cli_args(parser.parse_args(["--model", model, "--scheduler", "medha"]))
except SystemExit as e:
    print("MEDHA_EXIT", e.code, flush=True)
'''


def run(model):
    return subprocess.run([sys.executable, "-c", SCRIPT, model], capture_output=True,
                          text=True, timeout=300)


def test_plain_vllm_unaffected_and_medha_refused(smollm2_path):
    plain = run(smollm2_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert plain.stderr.count("medha-vllm is inactive") == 1
    assert "supports vLLM >=0.32.0,<0.34, found 0.99.0" in plain.stderr
    # Only the CLI flags are there (so that --scheduler medha can be refused
    # with a message); no other patch, nothing that changes plain vLLM.
    patches_line = next(l for l in plain.stdout.splitlines() if l.startswith("PATCHES"))
    for name in ("parallel_layout", "stage_timeline", "cpu_pp", "ray_cpu"):
        assert f"'{name}': 'none'" in patches_line, patches_line
    assert "LAYOUT_WRAPPED False" in plain.stdout
    assert "PARSED None" in plain.stdout
    # Asking for Medha: exit 2 with the supported range.
    assert "MEDHA_EXIT 2" in plain.stdout
    assert plain.stderr.count("medha-vllm supports vLLM >=0.32.0,<0.34, found 0.99.0") == 2


def test_medha_scheduler_refuses_an_unsupported_vllm(monkeypatch):
    import pytest
    import vllm

    from medha_vllm.compat import UnsupportedVLLMVersion
    from medha_vllm.scheduler import MedhaScheduler

    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    with pytest.raises(UnsupportedVLLMVersion, match="found 0.99.0"):
        MedhaScheduler.__init__(object.__new__(MedhaScheduler))
