"""The default iteration budget derived from the host's profile (medha_vllm/policy/budget.py)."""

from __future__ import annotations

import pytest

from medha_vllm.config import MedhaConfig
from medha_vllm.policy.budget import budgets_for, derive_target, efficient_chunk
from medha_vllm.policy.predictor import LinearBatchPredictor

# 1 ms a token, and each chunk re-reads its context (64K tokens before it) at
# 1 s per million tokens: per-token cost 1 ms + 65.5 ms / c. The 4096-token
# chunk's is 1.016 ms; within 1.25x (1.270 ms) from c = 256 (1.256 ms) on the
# 32 x 2^k grid, not at 128 (1.512 ms).
SLOW = LinearBatchPredictor([0.0, 1e-3, 0.0, 1.0, 0.0, 0.0])
# The same plus a 50 ms fixed cost per iteration: shared by everything in the
# batch, so it does not make small chunks inefficient.
SLOW_FIXED = LinearBatchPredictor([0.05, 1e-3, 0.0, 1.0, 0.0, 0.0])
FAST = LinearBatchPredictor([0.0, 1e-5, 0.0, 1e-2, 0.0, 0.0])


def test_efficient_chunk_is_the_smallest_within_the_efficiency_bound():
    assert efficient_chunk(SLOW, 65536, 32, 4096) == 256
    assert efficient_chunk(SLOW, 4096, 32, 4096) == 32  # short context: any chunk is efficient
    assert efficient_chunk(SLOW, 65536, 32, 128) == 128  # capped at max_chunk
    assert efficient_chunk(SLOW_FIXED, 65536, 32, 4096) == 256
    assert efficient_chunk(SLOW_FIXED, 4096, 32, 4096) == 32


def test_slow_host_raises_the_budget_to_fit_the_smallest_chunk():
    d = derive_target(SLOW, 65536, 32, 4096, 0.05)
    assert d.chunk == 32 and d.target_s == pytest.approx(0.032 + 65536 / 1e6)
    assert "raised from the platform default 0.050 s" in d.reason and "would be 256 tokens" in d.reason
    assert derive_target(SLOW, 65536, 32, 4096, 0.15).target_s == 0.15


def test_efficient_rule_raises_the_budget_to_fit_that_chunk():
    d = derive_target(SLOW, 65536, 32, 4096, 0.15, fit="efficient")
    assert d.chunk == 256
    assert d.target_s == pytest.approx(0.256 + 65536 / 1e6)
    assert "raised from the platform default 0.150 s" in d.reason and "256-token chunk" in d.reason


def test_raise_is_capped():
    d = derive_target(LinearBatchPredictor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0]), 65536, 32, 4096, 0.15)
    assert d.chunk_time_s == pytest.approx(32.0) and d.target_s == pytest.approx(0.6)
    assert "capped at 4x" in d.reason


def test_fast_host_keeps_the_platform_default():
    d = derive_target(FAST, 65536, 32, 4096, 0.15)
    assert d.target_s == 0.15 and "platform default 0.150 s" in d.reason


def test_solo_and_tbt_follow_unless_set_and_a_user_target_wins():
    cfg = MedhaConfig().resolve(on_gpu=False)
    b = budgets_for(cfg, SLOW, 65536, 0.05)
    assert b.target_s == pytest.approx(0.097536) and b.solo_s == pytest.approx(8 * b.target_s)
    assert b.tbt_slo_s == pytest.approx(1.5 * b.target_s)
    cfg = MedhaConfig.from_dict({"target_batch_time_s": 0.2, "tbt_slo_s": 0.5}).resolve(on_gpu=False)
    b = budgets_for(cfg, SLOW, 65536, cfg.target_batch_time_s)
    assert (b.target_s, b.solo_s, b.tbt_slo_s) == (0.2, pytest.approx(1.6), 0.5)
    assert "set by the user" in b.reason
