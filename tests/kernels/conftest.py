"""Fixtures for tests/kernels."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run kernel tests on one intra-op thread, restoring the setting afterwards.

    NOTE(medha): the problems here are tiny, so threads only add OpenMP
    barriers; on a 2-core machine shared with a busy process (a vLLM worker
    polls one core) those barriers made single tests take seconds instead of
    milliseconds. Thread-parallel paths are exercised by the benchmark.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
