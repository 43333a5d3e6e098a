"""The default iteration budget derived from the host's profile (medha_vllm/policy/budget.py)."""

from __future__ import annotations

import pytest

from medha_vllm.config import MedhaConfig
from medha_vllm.policy.budget import budgets_for, derive_target, fixed_cost, overrun_context
from medha_vllm.policy.predictor import BatchShape, LinearBatchPredictor

# 1 ms a token, and each chunk re-reads its context at 1 s per million tokens;
# 5 ms fixed per iteration. A 32-token chunk costs 0.037 + ctx / 1e6 s: above
# 0.15 s from 113,000 tokens of context (0.037 + 0.113 = 0.150).
SLOW_CTX = LinearBatchPredictor([0.005, 1e-3, 0.0, 1.0, 0.0, 0.0])
# A host whose iteration alone costs 40 ms (plus 1 ms for the decode's token).
SLOW_FIXED = LinearBatchPredictor([0.04, 1e-3, 0.0, 0.0, 0.0, 0.0])
FAST = LinearBatchPredictor([0.002, 1e-5, 0.0, 1e-2, 0.0, 0.0])


def test_fixed_cost_is_one_decode_at_no_context():
    assert fixed_cost(SLOW_FIXED) == pytest.approx(0.041)
    assert fixed_cost(SLOW_FIXED) == SLOW_FIXED.predict(BatchShape((), (1,)))


def test_overrun_context_is_the_first_context_on_the_grid_past_the_budget():
    over = overrun_context(SLOW_CTX, 32, 0.15, 131072)
    assert over % 32 == 0
    assert SLOW_CTX.predict(BatchShape(((32, over),))) > 0.15
    assert SLOW_CTX.predict(BatchShape(((32, over - 32),))) <= 0.15
    assert over == 113_024
    assert overrun_context(SLOW_CTX, 32, 0.15, 65536) is None
    # Off the grid: 113,020 is below the grid's 113,024 and overruns only
    # at its own length (0.037 + 0.11302 > 0.15).
    assert overrun_context(SLOW_CTX, 32, 0.15, 113_020) == 113_020
    assert overrun_context(SLOW_CTX, 32, 0.15, 112_999) is None


def test_context_cost_alone_keeps_the_platform_default_and_says_where_it_overruns():
    # The old rule raised this host's budget to fit a 32-token chunk at 128K
    # (0.168 s); what decides now is the fixed cost (6 ms, 4 % of 0.15 s).
    d = derive_target(SLOW_CTX, 131072, 32, 0.15)
    assert d.target_s == 0.15 and d.overrun_context == 113_024
    assert d.chunk_time_s == pytest.approx(0.037 + 0.131072)
    assert "platform default 0.150 s" in d.reason and "below 113024 tokens" in d.reason
    d = derive_target(SLOW_CTX, 65536, 32, 0.15)
    assert d.overrun_context is None and "fits up to 65536 tokens" in d.reason


def test_fixed_cost_raises_the_budget_to_keep_its_share():
    d = derive_target(SLOW_FIXED, 65536, 32, 0.15)
    assert d.target_s == pytest.approx(0.41)  # 41 ms is 10 % of it
    assert "raised from the platform default 0.150 s" in d.reason and "41.0 ms" in d.reason


def test_raise_is_capped():
    d = derive_target(LinearBatchPredictor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]), 65536, 32, 0.15)
    assert d.target_s == pytest.approx(0.6) and "capped at 4x" in d.reason


def test_fast_host_keeps_the_platform_default():
    d = derive_target(FAST, 65536, 32, 0.15)
    assert d.target_s == 0.15 and d.overrun_context is None
    assert "platform default 0.150 s" in d.reason


def test_solo_and_tbt_follow_unless_set_and_a_user_target_wins():
    cfg = MedhaConfig().resolve(on_gpu=False)
    b = budgets_for(cfg, SLOW_FIXED, 65536, 0.05)
    assert b.target_s == pytest.approx(0.2) and b.solo_s == pytest.approx(8 * b.target_s)
    assert b.tbt_slo_s == pytest.approx(1.5 * b.target_s)
    assert b.solo_quiet_s == pytest.approx(2 * b.solo_s)
    cfg = MedhaConfig.from_dict({"target_batch_time_s": 0.2, "tbt_slo_s": 0.5}).resolve(on_gpu=False)
    b = budgets_for(cfg, SLOW_FIXED, 65536, cfg.target_batch_time_s)
    assert (b.target_s, b.solo_s, b.tbt_slo_s) == (0.2, pytest.approx(1.6), 0.5)
    assert b.solo_quiet_s == pytest.approx(3.2)
    cfg = MedhaConfig.from_dict({"solo_quiet_s": 0.0}).resolve(on_gpu=False)
    assert budgets_for(cfg, SLOW_FIXED, 65536, 0.15).solo_quiet_s == 0.0
    assert "set by the user" in b.reason
