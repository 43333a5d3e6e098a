"""Medha's attention backend through `vllm serve`: a model the native kernel cannot serve
(here: sliding-window layers) falls back to vLLM's CPU_ATTN with one INFO line saying why, and
serves; asking for the backend explicitly on such a model stops start-up with a message
naming the setting. (Exactness with the backend on: test_exactness.py.)"""

from __future__ import annotations

import pytest
from openai import OpenAI

from sliding_window_medha import SLIDING_WINDOW_MEDHA

from benchmarks.harness.launch import VllmServer

pytestmark = pytest.mark.e2e


def test_unservable_model_falls_back_with_one_info_line(synthetic_path, tmp_path):
    log = tmp_path / "serve.log"
    with VllmServer(synthetic_path, SLIDING_WINDOW_MEDHA, served_name="m", log_path=str(log)) as srv:
        client = OpenAI(base_url=srv.base_url + "/v1", api_key="none", max_retries=0)
        r = client.completions.create(model="m", prompt="one two three", max_tokens=4, temperature=0)
        assert r.usage.completion_tokens == 4
    lines = [l for l in log.read_text().splitlines() if "medha: attention on" in l]
    assert len(lines) == 1, lines
    assert "vLLM's CPU_ATTN kernel" in lines[0]
    assert "cannot serve this model: the model uses sliding-window attention" in lines[0]


def test_explicit_backend_on_unservable_model_refuses_at_startup(refused_startups):
    # `vllm serve` with SLIDING_WINDOW_MEDHA + --medha-attention-backend medha (tests/e2e/conftest.py).
    out = refused_startups["explicit_backend_sliding_window"]
    assert out.returncode != 0
    assert ("--medha-attention-backend medha cannot serve this model: "
            "the model uses sliding-window attention" in out.text), out.text[-3000:]
