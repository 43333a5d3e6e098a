"""Compat test of every vLLM internal MedhaScheduler touches
(medha_vllm/vllm_seams.py): they match on the installed vLLM, and a moved or
changed one is named at start-up."""

import pytest
from harness import make_scheduler

from medha_vllm import vllm_seams
from medha_vllm.vllm_seams import VllmSeamError, check_seams


def test_seams_match_the_installed_vllm(synthetic_path):
    check_seams()
    check_seams(make_scheduler(synthetic_path))  # instance attributes too


def test_a_changed_signature_is_named(monkeypatch):
    from vllm.v1.core.sched.scheduler import Scheduler

    def _preempt_request(self, req, when):  # parameters renamed upstream
        pass

    monkeypatch.setattr(Scheduler, "_preempt_request", _preempt_request)
    with pytest.raises(VllmSeamError, match=r"Scheduler\._preempt_request: parameters"):
        check_seams()


def test_a_missing_hook_is_named(monkeypatch):
    from vllm.v1.core.sched.scheduler import Scheduler

    monkeypatch.delattr(Scheduler, vllm_seams.CHUNK_CAP_HOOK)
    with pytest.raises(VllmSeamError, match="_mamba_block_aligned_split: missing"):
        check_seams()


def test_a_missing_instance_attribute_fails_start_up(synthetic_path, monkeypatch):
    from medha_vllm.scheduler import MedhaScheduler

    real = vllm_seams._SCHEDULER_ATTRS
    monkeypatch.setattr(vllm_seams, "_SCHEDULER_ATTRS", real + ("kv_holding_running",))
    with pytest.raises(VllmSeamError, match="Scheduler.kv_holding_running: missing"):
        make_scheduler(synthetic_path, cls=MedhaScheduler)


def test_a_prefill_cadence_does_not_override_the_plan(synthetic_path):
    """vLLM 0.33 holds prefills for `--prefill-schedule-interval` steps even
    without data parallelism; under Medha the flag changes no step (0.32 never
    applied it without DP: the tables are equal there by construction)."""
    from harness import Driver, make_request

    from medha_vllm.policy.predictor import LinearBatchPredictor

    ms = LinearBatchPredictor([0.0, 1e-3, 0.0, 0.0, 0.0, 0.0])
    budget = {"target_batch_time_s": 0.1, "solo_batch_time_s": 0.1}

    def rows(interval):
        s = make_scheduler(synthetic_path, medha=budget, prefill_schedule_interval=interval)
        s.set_predictor(ms)
        assert getattr(s, "local_prefill_interval", 1) == 1
        # `s` decodes while `L` is prefilled: the cadence would hold L's
        # chunks for 3 steps of every 4.
        d = Driver(s, ms.predict, [make_request("s", 40, 0.0, max_tokens=20),
                                   make_request("L", 600, 0.05, max_tokens=2)])
        d.run()
        return [(round(r.t, 3), r.run) for r in d.rows]

    base = rows(1)
    assert sum(r.get("L", 0) > 1 and "s" in r for _, r in base) == 7  # chunks beside decodes
    assert rows(4) == base
