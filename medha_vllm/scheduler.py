"""MedhaScheduler: vLLM's scheduler with Medha's batch formation.

A thin adapter. Every iteration it builds a vLLM-free snapshot of the engine
(`policy.planner.EngineView`), asks the pure planner for the iteration's plan
(`plan_iteration`: LARS order, waiting cut, solo budget, chunk search, space
sharing, drain split, free-slot cap, eviction) and applies the plan to vLLM's
own `Scheduler.schedule()` through the seams in `vllm_seams.py`:

1. victims are preempted for recompute;
2. `running` is put in the plan's order (decodes, then prefills most urgent
   first), so vLLM's FCFS victim rule (`running[-1]`) frees the least urgent
   request under KV pressure, and `waiting` gets the admitted requests first;
3. each request's chunk is capped in the one per-request seam vLLM has (the
   Mamba block-alignment hook, called by both scheduling loops). A cap of 0
   skips a running prefill this iteration (it keeps its KV cache: preemption
   between chunks) and ends the waiting loop, so only planned requests are
   admitted. NOTE(medha): vLLM only offers one global per-step cap
   (`long_prefill_token_threshold`); this hook is the smallest seam that gives a
   per-request cap with no patch and no copy of `schedule()`.

Everything else is vLLM's: KV manager, queues, preemption, output building.
The read side (the planner's view, batch shapes, pause counts:
engine_view.py), start-up profiling (startup_profile.py), per-request SLOs
(slo.py), the batches in flight (pipeline.py) and the async-scheduling
variant (async_scheduler.py) are their own modules.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from vllm.logger import init_logger
from vllm.v1.core.sched.scheduler import Scheduler

from medha_vllm import vllm_seams as seams
from medha_vllm.config import MedhaConfig
from medha_vllm.engine_view import PauseTracker, batch_shape, build_view
from medha_vllm.kvp import scheduling as kvp_scheduling
from medha_vllm.metrics import MedhaMetricsRecorder
from medha_vllm.pipeline import BatchLedger
from medha_vllm.policy.budget import budgets_for
from medha_vllm.policy.planner import IterationPlan, plan_iteration
from medha_vllm.policy.predictor import LinearBatchPredictor, OnlineCorrection
from medha_vllm.policy.work import PrefillWork
from medha_vllm.slo import SloBook, slack_state_of
from medha_vllm.startup_profile import StartupProfile

# NOTE(medha): under the "vllm." namespace so vLLM's logging config shows it.
logger = init_logger(f"vllm.{__name__}")


class MedhaScheduler(Scheduler):
    # Scheduling overlaps the batch in flight (MedhaAsyncScheduler).
    async_scheduling = False

    def __new__(cls, *args: Any, **kwargs: Any):
        # NOTE(medha): vLLM builds the one class `scheduler_cls` names, chosen
        # before async scheduling is settled; with it on, the same name builds
        # Medha on vLLM's AsyncScheduler (async_scheduler.py).
        if cls is MedhaScheduler:
            vc = kwargs.get("vllm_config", args[0] if args else None)
            if getattr(getattr(vc, "scheduler_config", None), "async_scheduling", False):
                from medha_vllm.async_scheduler import MedhaAsyncScheduler

                cls = MedhaAsyncScheduler
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from vllm.platforms import current_platform

        from medha_vllm.compat import check_vllm_version

        check_vllm_version()  # a clear error, before anything else can fail
        super().__init__(*args, **kwargs)
        self._mamba_align = seams.take_over(self, logger)
        self.medha = cfg = MedhaConfig.from_vllm_config(self.vllm_config).resolve(
            on_gpu=current_platform.is_cuda_alike())
        cfg.check_paths()  # before the first forward pass writes the timeline
        # Chunk caps of this iteration (req_id -> tokens) and the cap of a
        # running request not in the map (None: uncapped).
        self._caps: dict[str, int] = {}
        self._cap_running: int | None = None
        # Clocks: wall time (request arrivals) and a monotonic one for
        # iteration times; tests replace both with a fake.
        self.clock = time.time
        self.perf_clock = time.perf_counter
        self.stages = self.vllm_config.parallel_config.pipeline_parallel_size
        self.ledger = BatchLedger(self.stages)
        self.correction = OnlineCorrection()
        self.metrics = MedhaMetricsRecorder(cfg.target_batch_time_s)
        self.settings, self.rules = cfg.planner_settings(), cfg.deadline_rules()
        self.slo = SloBook(self._new_slack_state, self.metrics.count_miss)
        self.last_plan: IterationPlan | None = None
        # Last time the engine held more than one request (the solo budget's
        # quiet period, policy/planner.py).
        self.last_company = float("-inf")
        self.pauses = PauseTracker(self.metrics)
        self.kvp = kvp_scheduling.attach(self, cfg.kv_parallel_size, cfg.kvp_max_tokens_per_group)
        self.kvp_groups = self.kvp and kvp_scheduling.GroupTracker(self.kvp, self.metrics)
        self.profile = StartupProfile(self, cfg)
        self.metrics.set_profile_error(self.profile.profile_error)
        self.set_predictor(self.profile.predictor or LinearBatchPredictor(),
                           profiled=self.profile.predictor is not None)
        logger.info("Medha scheduler: %s, pipeline stages %d, async scheduling %s",
                    cfg.describe(self.settings, self.rules), self.stages, self.async_scheduling)

    def set_predictor(self, predictor: LinearBatchPredictor, profiled: bool = True) -> None:
        """Use `predictor` from now on (deadlines are re-derived from it); a
        profile of this host also sets the default budgets (policy/budget.py).
        With KVP it predicts the slowest group's cost (contexts capped at the
        shard size), for the chunk search and the remaining-prefill table alike."""
        if self.kvp is not None:
            predictor = dataclasses.replace(predictor, context_cap=self.kvp.shard_tokens)
        if profiled:
            b = budgets_for(self.medha, predictor, self.max_model_len, self.medha.target_batch_time_s)
            self.settings = dataclasses.replace(self.settings, target_batch_time_s=b.target_s,
                                                solo_batch_time_s=b.solo_s,
                                                solo_quiet_s=b.solo_quiet_s)
            self.rules = dataclasses.replace(self.rules, tbt_slo_s=b.tbt_slo_s)
            self.metrics.snap.target_batch_time_s = b.target_s
            logger.info("Medha: iteration budget %.3f s (solo %.3f s after %.3f s alone, "
                        "TBT SLO %.3f s): %s", b.target_s, b.solo_s, b.solo_quiet_s, b.tbt_slo_s,
                        b.reason)
        self.predictor = predictor
        self.work = PrefillWork(predictor, self.settings.target_batch_time_s,
                                self.settings.min_chunk,
                                min(self.settings.max_chunk, self.max_num_scheduled_tokens),
                                self.max_model_len, self.stages)
        self.slo.clear()

    def _new_slack_state(self, request):
        return slack_state_of(request, self.work, self.rules, self.metrics.count_floored_deadline)

    def has_requests(self) -> bool:
        if self.profile.active:
            return True  # a pending start-up profile makes the engine loop run
        if not super().has_requests():
            return False
        return not self.ledger.stalled(
            len(self.waiting), bool(self.finished_req_ids),
            all(r.num_computed_tokens >= r.num_tokens for r in self.running))

    # ------------------------------------------------------------ schedule
    def schedule(self, throttle_prefills: bool = False):
        clean = not self.ledger.in_flight()
        caps = self.profile.iteration_caps(clean) if self.profile.active else None
        if caps is None:
            self._plan_and_apply()
        else:  # a start-up profile batch, dictated (waiting requests: none)
            self._caps, self._cap_running = caps, 0
        try:
            output = super().schedule(throttle_prefills)
        finally:
            self._caps, self._cap_running = {}, None
        shape = batch_shape(output, self.requests)
        self.ledger.dispatched(shape, self.perf_clock(), clean)
        if not clean and shape.num_tokens:
            self.metrics.count_overlapped_batch()
        self.pauses.observe(output, self.requests, self.profile.active)
        if self.kvp_groups:
            self.kvp_groups.observe(output, self.requests)
        return output

    def _plan_and_apply(self) -> None:
        if len(self.running) + len(self.waiting) > 1:
            self.last_company = self.clock()
        self._apply(plan_iteration(build_view(self), self.settings, self.work,
                                   self.correction.factor(True)))

    def _apply(self, plan: IterationPlan) -> None:
        for rid in plan.victims:
            seams.preempt_for_recompute(self, self.requests[rid], time.monotonic())
        seams.reorder_running(self, plan.running_order)
        seams.reorder_waiting(self, [self.requests[rid] for rid in plan.admit])
        self._caps = dict(plan.chunks)
        self._caps.update((rid, 0) for rid in plan.paused)
        self._cap_running = None  # decodes: one token each, uncapped
        for c in plan.chunks.values():
            self.metrics.observe_chunk(c)
        if plan.most_urgent_rho is not None:
            self.metrics.observe_slack(plan.most_urgent_rho)
        if plan.yielded is not None:
            self.metrics.count_first_token_yield()
        self.last_plan = plan

    def _mamba_block_aligned_split(self, request, num_new_tokens: int, *args: Any,
                                   **kwargs: Any) -> int:
        if self._mamba_align:
            num_new_tokens = super()._mamba_block_aligned_split(
                request, num_new_tokens, *args, **kwargs)
        cap = self._caps.get(request.request_id)
        if cap is None:
            # NOTE(medha): only planned waiting requests are admitted.
            cap = self._cap_running if seams.is_running(request) else 0
        num_new_tokens = kvp_scheduling.cap_chunk(self.kvp, request, num_new_tokens)
        return num_new_tokens if cap is None else min(num_new_tokens, cap)

    # ------------------------------------------------------------ outputs
    def update_from_output(self, scheduler_output, model_runner_output):
        returned = self.ledger.returned(self.perf_clock())
        batch, measured = returned if returned is not None else (None, None)
        if batch is not None and batch.shape.num_tokens and measured is not None:
            if self.profile.active:
                self.profile.record(batch.shape, measured)
            else:
                self.metrics.observe_iteration(measured, self.correction.observe_batch(
                    self.predictor, batch.shape, measured))
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        StartupProfile.drop_outputs(outputs)
        now = self.clock()
        for eco in outputs.values():
            for o in eco.outputs:
                self.slo.observe_tokens(o.request_id, len(o.new_token_ids), now)
                if o.finish_reason is not None:
                    self._forget(o.request_id)
        # Publish at once when the engine goes idle (no later iteration would).
        self.metrics.maybe_flush(force=not self.running and not self.waiting)
        return outputs

    def finish_requests(self, request_ids, finished_status):
        done = super().finish_requests(request_ids, finished_status)
        for r in done:
            self._forget(r.request_id)
            if finished_status == seams.abort_status() and \
                    not StartupProfile.is_synthetic(r.request_id):
                self.metrics.count_abort()
        self.metrics.maybe_flush(force=bool(done))
        return done

    def _forget(self, req_id: str) -> None:
        if self.kvp_groups:
            self.kvp_groups.finished(req_id)
        self.slo.forget(req_id)
        self.metrics.forget(req_id)
