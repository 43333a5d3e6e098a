"""Bad Medha options stop `vllm serve` at start-up with a message naming the
option and its accepted range (argument parsing: no engine is started). The
real command once; every other bad value through the same parser in process
(tests/unit/test_patches.py), which is what `vllm serve` runs first."""

import subprocess

import pytest

from benchmarks.harness.launch import vllm_executable

pytestmark = pytest.mark.e2e


def test_serve_rejects_bad_option(smollm2_path):
    out = subprocess.run([vllm_executable(), "serve", smollm2_path, "--port", "1",
                          "--scheduler", "medha", "--medha-target-batch-time-s", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    for w in ("target_batch_time_s", "(0.0, 60.0]"):
        assert w in out.stderr, (w, out.stderr[-2000:])


def test_serve_rejects_an_unwritable_timeline_path(smollm2_path, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = subprocess.run([vllm_executable(), "serve", smollm2_path, "--port", "1",
                          "--scheduler", "medha", "--medha-timeline-path",
                          str(blocker / "timeline.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "medha option 'timeline_path': cannot write to its directory" in out.stderr, \
        out.stderr[-2000:]
    assert "Traceback" not in out.stderr
