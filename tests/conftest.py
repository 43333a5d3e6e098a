"""Shared fixtures. Engines take 30-90 s to start on the project's CPUs, so
servers are module- or session-scoped and shared across tests."""

from __future__ import annotations

import os

import pytest

# Tests run offline and with a modest KV cache (several engines may coexist).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from benchmarks.harness.models import build_smollm2

    return str(build_smollm2())


@pytest.fixture(scope="session")
def synthetic_path() -> str:
    from benchmarks.harness.models import build_synthetic

    return str(build_synthetic())


@pytest.fixture(scope="session")
def profile_dir(tmp_path_factory) -> str:
    """One profile cache for the whole session (engines with equal keys share)."""
    return os.environ.get("MEDHA_TEST_PROFILE_DIR") or str(tmp_path_factory.mktemp("profiles"))
