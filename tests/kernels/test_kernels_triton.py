"""Triton kernel logic on CPU: run interpret_triton_cases.py under TRITON_INTERPRET=1.

NOTE(medha): the variable must be set before Triton is imported and would
turn every later Triton launch in this process into the slow interpreter, so
the cases run in a child pytest process with their own environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cpu

CASES = Path(__file__).with_name("interpret_triton_cases.py")


def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton", reason="triton not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(CASES)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=CASES.parent)
    tail = (run.stdout[-6000:] + "\n" + run.stderr[-3000:]).strip()
    assert run.returncode == 0, tail
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], tail
