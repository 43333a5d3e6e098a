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
