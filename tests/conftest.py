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


def pytest_configure(config):
    # scripts/test_vllm_version.sh runs the suite against another vLLM: make
    # sure that is the vLLM the tests import.
    want = os.environ.get("MEDHA_EXPECT_VLLM")
    if want:
        import vllm

        if vllm.__version__ != want:
            raise pytest.UsageError(f"expected vLLM {want}, imported {vllm.__version__} "
                                    f"from {vllm.__file__}")
        print(f"medha: testing against vLLM {vllm.__version__} ({vllm.__file__})")


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
