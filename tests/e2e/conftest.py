"""`vllm serve` commands that must stop at start-up, run all at once.

Each one is mostly vLLM's own imports on one thread (10-40 s), so the suite
starts them together the first time a test asks for one (72 s for the six on
two cores, against about 120 s one after another); each test then asserts on
its own result.
Nothing else runs while they do: the first test that needs one waits for all.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from sliding_window_medha import SLIDING_WINDOW_MEDHA

from benchmarks.harness.launch import free_port, vllm_executable


@dataclass(frozen=True)
class Refused:
    returncode: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def _commands(smollm2: str, synthetic: str, tmp: Path) -> dict[str, tuple[list[str], dict]]:
    serve = [vllm_executable(), "serve"]
    blocker = tmp / "a-file"
    blocker.write_text("x")
    return {
        # test_bad_options.py
        "bad_option": (serve + [smollm2, "--port", "1", "--scheduler", "medha",
                                "--medha-target-batch-time-s", "0"], {}),
        "unwritable_timeline": (serve + [smollm2, "--port", "1", "--scheduler", "medha",
                                         "--medha-timeline-path", str(blocker / "timeline.json")], {}),
        # test_spp.py (the synthetic model has 4 hidden layers)
        "pp8_on_4_layers": (serve + [synthetic, "--port", "0", "-pp", "8", "--scheduler", "medha"], {}),
        "partition_5_layers": (serve + [synthetic, "--port", "0", "-pp", "2", "--scheduler", "medha"],
                               {"VLLM_PP_LAYER_PARTITION": "3,2"}),
        "partition_2_of_3_stages": (serve + [synthetic, "--port", "0", "-pp", "3"],
                                    {"VLLM_PP_LAYER_PARTITION": "2,2"}),
        # test_attention_backend.py
        "explicit_backend_sliding_window": (
            serve + [synthetic, "--host", "127.0.0.1", "--port", str(free_port()),
                     *SLIDING_WINDOW_MEDHA, "--medha-attention-backend", "medha"], {}),
    }


@pytest.fixture(scope="session")
def refused_startups(smollm2_path, synthetic_path, tmp_path_factory) -> dict[str, Refused]:
    tmp = tmp_path_factory.mktemp("refused")
    procs = {}
    for name, (cmd, env) in _commands(smollm2_path, synthetic_path, tmp).items():
        # Files, not pipes: a full pipe would stall a command until its turn to be read.
        logs = (open(tmp / f"{name}.out", "w+"), open(tmp / f"{name}.err", "w+"))
        procs[name] = (subprocess.Popen(cmd, stdout=logs[0], stderr=logs[1], text=True,
                                        env={**os.environ, **env}, cwd=tmp), logs)
    out = {}
    for name, (p, logs) in procs.items():
        try:
            p.wait(timeout=600)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        texts = []
        for f in logs:
            f.seek(0)
            texts.append(f.read())
            f.close()
        out[name] = Refused(p.returncode, *texts)
    return out
