"""Bad Medha options stop `vllm serve` at start-up with a message naming the
option and its accepted range (argument parsing: no engine is started)."""

import subprocess

import pytest

from benchmarks.harness.launch import vllm_executable

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("args, words", [
    (["--scheduler", "medha", "--medha-target-batch-time-s", "0"],
     ["target_batch_time_s", "(0.0, 60.0]"]),
    (["--scheduler", "medha", "--additional-config", '{"medha": {"space_sharing_max_slack": 2}}'],
     ["space_sharing_max_slack", "[0.0, 1.0]"]),
    (["--scheduler", "medha", "--additional-config", '{"medha": {"chunk": 1}}'],
     ["unknown medha option", "chunk"]),
    (["--scheduler", "round-robin"], ["--scheduler", "medha"]),
])
def test_serve_rejects_bad_option(smollm2_path, args, words):
    out = subprocess.run([vllm_executable(), "serve", smollm2_path, "--port", "1"] + args,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    for w in words:
        assert w in out.stderr, (w, out.stderr[-2000:])
