"""MedhaScheduler: vLLM's scheduler with Medha's batch formation.

Mechanism only: the policy (LARS ordering, deadlines, chunk search, space
sharing, predictor) lives in medha_vllm/policy/ and is pure Python.

How it plugs into vLLM's `Scheduler.schedule()` without copying it:

1. Before calling `super().schedule()`, Medha computes a plan: every running
   decode, then prefill chunks in LARS order, each sized by the predictor to
   fit the iteration budget.
2. It orders `self.running` (decodes, then prefills most urgent first) and the
   FCFS waiting deque (planned requests first, in plan order). vLLM's FCFS
   victim rule (`running[-1]`) then evicts the least urgent request under KV
   pressure, and the waiting loop admits exactly the planned requests.
3. Per-request chunk sizes go through the one per-request seam vLLM has: the
   `_mamba_block_aligned_split(request, num_new_tokens, ...)` hook, which both
   the running and the waiting loop call for every request once its chunk is
   computed. Medha enables it and caps the chunk there (after delegating to the
   real Mamba alignment for Mamba models). A cap of 0 skips a running request
   for this iteration (it keeps its KV cache: preemption between chunks) and
   ends the waiting loop.
   NOTE(medha): vLLM only offers one global per-step cap
   (`long_prefill_token_threshold`); this hook is the smallest seam that gives
   a per-request cap with no patch and no copy of `schedule()`.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from pathlib import Path
from typing import Any

from vllm.logger import init_logger
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.request_queue import SchedulingPolicy, create_request_queue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from medha_vllm.config import MedhaConfig
from medha_vllm.metrics import MedhaMetricsRecorder
from medha_vllm.policy.batching import PrefillCandidate, drain_tail_cap, plan_batch
from medha_vllm.policy.lars import SlackState, length_aware_ttft_deadline, priority_key
from medha_vllm.policy.predictor import (BatchShape, LinearBatchPredictor, OnlineCorrection,
                                         PrefillTimeTable)
from medha_vllm.profiler import (PROFILE_FORMAT, PROFILE_PREFIX, ProfilePlan, ProfileRecorder,
                                 default_profile_dir, hardware_id, load_profile, profile_key,
                                 save_profile)

# NOTE(medha): under the "vllm." namespace so vLLM's logging config shows it.
logger = init_logger(f"vllm.{__name__}")

# Per-request SLO fields accepted in `vllm_xargs` (SamplingParams.extra_args).
XARG_TTFT = "ttft_deadline_s"
XARG_TBT = "tbt_deadline_s"
# Smallest chunk the SPP drain split makes (tokens).
DRAIN_MIN_TAIL_TOKENS = 256


class MedhaScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from vllm.platforms import current_platform

        self.medha = MedhaConfig.from_vllm_config(self.vllm_config).resolve(
            on_gpu=current_platform.is_cuda_alike())
        cfg = self.medha
        # NOTE(medha): Medha orders both queues itself (user priority class,
        # then LARS); vLLM's heap would fight that order, so the waiting queue
        # is the FCFS deque, which Medha re-sorts every iteration.
        if self.policy != SchedulingPolicy.FCFS:
            logger.info("Medha: ordering by (priority, relative slack); "
                        "vLLM's --scheduling-policy %s is superseded", self.policy.value)
            self.policy = SchedulingPolicy.FCFS
            old = list(self.waiting)
            self.waiting = create_request_queue(SchedulingPolicy.FCFS)
            for r in old:
                self.waiting.add_request(r)
        self._mamba_align = self.need_mamba_block_aligned_split
        self.need_mamba_block_aligned_split = True
        # Per-iteration chunk caps (req_id -> tokens); see module docstring.
        self._caps: dict[str, int] = {}
        self._cap_default: int | None = None
        self._slack: dict[str, SlackState] = {}
        self._token_deadline: dict[str, float] = {}
        self._was_scheduled: set[str] = set()
        # Pipeline stages (SPP): up to `pp` batches are in flight at once.
        self.pp = self.vllm_config.parallel_config.pipeline_parallel_size
        # (schedule() end time, batch shape, clean) of each batch in flight, in
        # dispatch order (update_from_output receives them in the same order).
        # `clean`: no earlier batch was in flight, so the measured time is the
        # batch's own time through the pipeline.
        self._pending: deque[tuple[float, BatchShape, bool]] = deque()
        self.correction = OnlineCorrection()
        self.metrics = MedhaMetricsRecorder(cfg.target_batch_time_s)
        self.predictor = LinearBatchPredictor()
        self._profile_plan: ProfilePlan | None = None
        self._profile_rec: ProfileRecorder | None = None
        self._profile_path = None
        self._init_predictor()
        self._rebuild_table()
        logger.info(
            "Medha scheduler: target batch time %.3f s (solo %.3f s), TBT SLO %.3f s, "
            "chunks %d..%d, space sharing %s (long >= %d tokens, rho_max %.2f), "
            "pipeline stages %d", cfg.target_batch_time_s, cfg.solo_batch_time_s,
            cfg.tbt_slo_s, cfg.min_chunk_size, cfg.max_chunk_size, cfg.space_sharing,
            cfg.long_request_threshold, cfg.space_sharing_max_slack, self.pp)

    # ------------------------------------------------------------ predictor
    def _init_predictor(self) -> None:
        cfg = self.medha
        vc = self.vllm_config
        pc = vc.parallel_config
        key_fields = {
            "model": str(vc.model_config.model), "dtype": str(vc.model_config.dtype),
            "hardware": hardware_id(), "tp": pc.tensor_parallel_size,
            "pp": pc.pipeline_parallel_size, "block_size": self.block_size,
            "token_budget": self.max_num_scheduled_tokens, "vllm": _vllm_version(),
            "max_context": self._profile_context(),
        }
        pdir = default_profile_dir() if cfg.profile_dir is None else Path(cfg.profile_dir).expanduser()
        self._profile_path = pdir / f"{profile_key(key_fields)}.json"
        cached = load_profile(self._profile_path)
        if cached is not None:
            self.predictor = LinearBatchPredictor.from_dict(cached["predictor"])
            self.metrics.set_profile_error(cached["stats"].get("heldout_median_ape"))
            logger.info("Medha: loaded predictor profile %s (held-out median error %.1f%%)",
                        self._profile_path, 100 * (cached["stats"].get("heldout_median_ape") or 0))
            return
        self._profile_key_fields = key_fields
        if not cfg.profile:
            logger.warning("Medha: no cached profile and profiling disabled; using a "
                           "generic predictor until live iterations correct it")
            return
        self._profile_plan = ProfilePlan.build(
            self._profile_context(), self.max_num_scheduled_tokens, cfg.max_chunk_size,
            max_model_len=self.max_model_len)
        self._profile_step = -1  # requests are added at the first iteration
        logger.info("Medha: will profile %s on %s (%d iterations, up to %d tokens of context, "
                    "at most %.0f s) as the engine's first iterations", key_fields["model"],
                    key_fields["hardware"], len(self._profile_plan.steps),
                    self._profile_context(), cfg.profile_time_budget_s)

    def _start_profile(self) -> None:
        """Add the synthetic requests. NOTE(medha): deferred to the first
        iteration because the engine initialises its block hashing (needed by
        prefix caching for every request) only after building the scheduler."""
        plan = self._profile_plan
        vocab = self.vllm_config.model_config.get_vocab_size()
        rng = random.Random(time.time_ns())
        hasher = self._block_hasher()
        for sr in plan.requests:
            req = Request(
                request_id=sr.req_id,
                prompt_token_ids=[rng.randrange(1, vocab) for _ in range(sr.prompt_len)],
                sampling_params=SamplingParams(max_tokens=1 << 20, ignore_eos=True,
                                               temperature=0.0),
                pooling_params=None,
                block_hasher=hasher,
            )
            # NOTE(medha): admitted like a request whose prefix KV arrived
            # from elsewhere: blocks are allocated for it, nothing computes it.
            req.num_computed_tokens = sr.pretend_computed
            super().add_request(req)
        self._profile_step = 0
        self._profile_rec = ProfileRecorder()
        logger.info("Medha: profiling started; requests wait until it ends")

    def has_requests(self) -> bool:
        # A pending start-up profile makes the engine loop run iterations.
        if self._profile_plan is not None:
            return True
        if not super().has_requests():
            return False
        # NOTE(medha): with pipeline stages, vLLM's engine calls schedule()
        # whenever its batch queue has room; when every request is waiting for
        # a batch in flight (e.g. one decode), that yields an empty batch, which
        # still makes a round trip through every worker before the real next
        # batch can go. Reporting "nothing to schedule" then makes the engine
        # wait for the batch in flight instead (it keeps stepping while its
        # batch queue is non-empty, and new arrivals flip this back).
        return not self._pipeline_stalled()

    def _batch_in_flight(self) -> bool:
        """A non-empty batch was dispatched and its output has not come back."""
        return any(shape.num_tokens for _, shape, _ in self._pending)

    def _pipeline_stalled(self) -> bool:
        """Nothing can be dispatched until a batch in flight returns."""
        if self.pp <= 1 or not self._batch_in_flight():
            return False
        if len(self._pending) > self.pp:
            return False  # bookkeeping out of step with the engine: never stall on it
        if len(self.waiting) or self.finished_req_ids:
            return False
        return all(r.num_computed_tokens >= r.num_tokens for r in self.running)

    def _block_hasher(self):
        """The engine's block hasher (prefix caching needs block hashes for
        every request it caches, synthetic ones included)."""
        cc = self.vllm_config.cache_config
        if not cc.enable_prefix_caching:
            return None
        from vllm.utils.hashing import get_hash_fn_by_name
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher

        return get_request_block_hasher(
            self.hash_block_size, get_hash_fn_by_name(cc.prefix_caching_hash_algo))

    def _profile_context(self) -> int:
        # The plan holds about 2 x levels x context of KV at once: keep it
        # within a third of the cache.
        kv_tokens = self.kv_cache_config.num_blocks * self.block_size
        return max(64, min(self.medha.profile_max_context, self.max_model_len - 64,
                           kv_tokens // 12))

    def _finish_profile(self) -> None:
        assert self._profile_rec is not None
        ids = [r.req_id for r in self._profile_plan.requests]
        super().finish_requests(ids, RequestStatus.FINISHED_ABORTED)
        if len(self._profile_rec.times) >= 8:
            self.predictor, stats = self._profile_rec.fit()
            save_profile(self._profile_path, {
                "format": PROFILE_FORMAT, "key": self._profile_key_fields,
                "predictor": self.predictor.to_dict(), "stats": stats})
            self.metrics.set_profile_error(stats["heldout_median_ape"])
            logger.info("Medha: profiled %d iterations in %.1f s; held-out median error "
                        "%.1f%%; saved %s", stats["num_samples"], stats["profile_seconds"],
                        100 * stats["heldout_median_ape"], self._profile_path)
        else:
            logger.warning("Medha: profiling stopped early with too few samples; "
                           "using a generic predictor corrected online")
        self._profile_plan = None
        self._profile_rec = None
        self._rebuild_table()

    def _rebuild_table(self) -> None:
        cfg = self.medha
        self.prefill_table = PrefillTimeTable(
            self.predictor, cfg.target_batch_time_s, cfg.min_chunk_size,
            min(cfg.max_chunk_size, self.max_num_scheduled_tokens), self.max_model_len)
        self._slack.clear()

    # ------------------------------------------------------------ requests
    def _pipelined(self, work_s: float, in_flight: bool = True) -> float:
        """Time to finish `work_s` of prefill (single-pipeline seconds) with SPP:
        consecutive chunks occupy the `pp` stages at once, so the work drains
        `pp` times faster, plus the drain of the last chunk through the stages
        after the first (about (pp - 1) / pp of one iteration)."""
        if self.pp <= 1:
            return work_s
        if work_s <= 0 and not in_flight:
            return 0.0
        return work_s / self.pp + self.medha.target_batch_time_s * (self.pp - 1) / self.pp

    def _remaining_s(self, r: Request) -> float:
        """Remaining prefill time of r from its dispatched cursor
        (num_computed_tokens counts tokens sent into the pipeline, including
        chunks still in flight; those are covered by the drain term)."""
        work = self.prefill_table(r.num_tokens) - self.prefill_table(r.num_computed_tokens)
        return self._pipelined(work, in_flight=r.num_in_flight_tokens > 0)

    def _slack_state(self, request: Request) -> SlackState:
        st = self._slack.get(request.request_id)
        if st is None:
            cfg = self.medha
            total = self._pipelined(self.prefill_table(request.num_prompt_tokens))
            xargs = (request.sampling_params.extra_args or {}) if request.sampling_params else {}
            ttft, tbt = _positive(xargs.get(XARG_TTFT)), _positive(xargs.get(XARG_TBT))
            for name, raw, val in ((XARG_TTFT, xargs.get(XARG_TTFT), ttft),
                                   (XARG_TBT, xargs.get(XARG_TBT), tbt)):
                if raw is not None and val is None:
                    logger.warning("Medha: request %s: vllm_xargs %s=%r is not a positive number "
                                   "of seconds; using the default deadline", request.request_id,
                                   name, raw)
            st = SlackState(
                arrival=request.arrival_time,
                ttft_deadline_s=ttft if ttft is not None else length_aware_ttft_deadline(
                    total, cfg.ttft_deadline_multiplier, cfg.ttft_deadline_floor_s),
                total_work_s=total,
                tbt_deadline_s=tbt if tbt is not None else cfg.tbt_slo_s,
                user_priority=request.priority)
            self._slack[request.request_id] = st
        return st

    # ------------------------------------------------------------ schedule
    def schedule(self, throttle_prefills: bool = False):
        in_flight = self._batch_in_flight()
        if self._profile_plan is not None:
            if in_flight:
                # NOTE(medha): with pipeline stages the engine asks for the next
                # batch while one is in flight; profile batches are timed one
                # at a time, so nothing else is dispatched meanwhile.
                self._caps, self._cap_default = {}, 0
            else:
                self._plan_profile_step()
        else:
            self._plan_iteration()
        try:
            output = super().schedule(throttle_prefills)
        finally:
            self._caps = {}
            self._cap_default = None
        self._pending.append((time.perf_counter(), self._shape_of(output), not in_flight))
        self._account_pauses(output)
        return output

    def _mamba_block_aligned_split(self, request: Request, num_new_tokens: int,
                                   *args: Any, **kwargs: Any) -> int:
        if self._mamba_align:
            num_new_tokens = super()._mamba_block_aligned_split(
                request, num_new_tokens, *args, **kwargs)
        cap = self._caps.get(request.request_id)
        if cap is None and request.status == RequestStatus.RUNNING:
            cap = self._cap_default
        elif cap is None:
            cap = 0  # NOTE(medha): only planned waiting requests are admitted.
        return num_new_tokens if cap is None else min(num_new_tokens, cap)

    def _plan_iteration(self) -> None:
        cfg = self.medha
        now = time.time()
        decodes: list[Request] = []
        prefills: list[Request] = []
        # Requests with nothing to dispatch until a batch in flight returns
        # (their last prefill chunk or their decode token is in the pipeline).
        busy: list[Request] = []
        for r in self.running:
            if r.num_computed_tokens >= r.num_tokens:
                busy.append(r)
            elif r.num_computed_tokens >= r.num_prompt_tokens:
                decodes.append(r)
            else:
                prefills.append(r)
        free_slots = self.max_num_running_reqs - len(self.running)
        keyed = []
        for r in prefills:
            st = self._slack_state(r)
            keyed.append((priority_key(st, now, self._remaining_s(r), r.request_id), r))
        # NOTE(medha): waiting requests matter only if a running slot is free;
        # with 1,000 queued, computing every key each iteration would cost
        # milliseconds, so only the most urgent few are ranked (nsmallest).
        waiting: list[Request] = []
        if free_slots > 0:
            waiting = [r for r in self.waiting if r.status in (RequestStatus.WAITING,
                                                                RequestStatus.PREEMPTED)]
            wkeyed = []
            for r in waiting:
                st = self._slack_state(r)
                remaining = st.total_work_s if r.num_computed_tokens == 0 else self._remaining_s(r)
                wkeyed.append((priority_key(st, now, remaining, r.request_id), r))
            keyed.extend(heapq.nsmallest(min(free_slots, 64), wkeyed, key=lambda kr: kr[0]))
        keyed.sort(key=lambda kr: kr[0])
        cands = [
            PrefillCandidate(
                req_id=r.request_id, remaining_tokens=r.num_tokens - r.num_computed_tokens,
                computed_tokens=r.num_computed_tokens, rho=k[1],
                is_long=r.num_prompt_tokens >= cfg.long_request_threshold)
            for k, r in keyed
        ]
        # NOTE(medha): a prefill alone in the engine (nothing else running or
        # waiting) protects nobody's latency with small chunks: it gets the
        # larger solo budget, i.e. fewer, cheaper chunks. A request arriving
        # meanwhile waits at most one stage's share of it.
        solo = len(cands) == 1 and len(self.running) + len(self.waiting) == 1
        budget = cfg.solo_batch_time_s if solo else cfg.target_batch_time_s
        plan = plan_batch(
            [r.num_computed_tokens for r in decodes], cands, self.predictor,
            budget, self.max_num_scheduled_tokens, cfg.min_chunk_size,
            min(cfg.max_chunk_size, self.max_num_scheduled_tokens),
            space_sharing=cfg.space_sharing, rho_max=cfg.space_sharing_max_slack,
            correction=self.correction.factor(True))
        if self.pp > 1:
            # SPP: split the end of a long prompt ever smaller so the pipeline
            # drains fast (the first token waits for the last chunk to cross
            # every stage). Short prompts are not split: per-chunk overheads
            # would outweigh the saving.
            for _, r in keyed:
                c = plan.chunks.get(r.request_id)
                if c and r.num_prompt_tokens >= cfg.long_request_threshold:
                    cap = drain_tail_cap(r.num_tokens - r.num_computed_tokens, self.pp,
                                         DRAIN_MIN_TAIL_TOKENS)
                    if cap is not None and cap < c:
                        plan.chunks[r.request_id] = cap
        # Never admit more new requests than there are free running slots.
        planned_waiting = [r for _, r in keyed if r.request_id in plan.chunks
                           and r.status != RequestStatus.RUNNING][:max(free_slots, 0)]
        victims = self._make_room(planned_waiting, keyed)
        keep = {r.request_id for r in planned_waiting}
        self._caps = {r.request_id: plan.chunks.get(r.request_id, 0) for r in prefills}
        self._caps.update({r.request_id: plan.chunks[r.request_id] for r in planned_waiting})
        self._cap_default = None  # running decodes: one token each, uncapped
        for r in waiting + victims:
            if r.request_id not in keep:
                self._caps[r.request_id] = 0
        prefills = [r for r in prefills if r not in victims]
        # Running: decodes first, then prefills most urgent first, so vLLM's
        # FCFS victim (running[-1]) is the least urgent under KV pressure.
        rank = {r.request_id: i for i, (_, r) in enumerate(keyed)}
        self.running[:] = busy + decodes + sorted(prefills, key=lambda r: rank[r.request_id])
        self._reorder_waiting([r.request_id for r in planned_waiting])
        for _, r in keyed:
            if r.request_id in plan.chunks:
                self.metrics.observe_chunk(plan.chunks[r.request_id])
        if keyed:
            self.metrics.observe_slack(keyed[0][0][1])

    def _make_room(self, planned_waiting: list[Request], keyed: list) -> list[Request]:
        """Evict less urgent running prefills when a planned waiting request
        cannot get its KV blocks. NOTE(medha): vLLM never lets a waiting
        request preempt a running one, so a long prefill paused between chunks
        would keep its KV cache while a more urgent short request waits; Medha
        frees the least urgent prefill instead (it is recomputed later; its
        tokens are never lost)."""
        if not planned_waiting:
            return []
        rank = {r.request_id: i for i, (_, r) in enumerate(keyed)}
        free = self.kv_cache_manager.block_pool.get_num_free_blocks()
        victims: list[Request] = []
        for w in planned_waiting:
            need = -(-w.num_tokens // self.block_size)
            if free >= need:
                free -= need
                continue
            # Least urgent running prefills first, only those less urgent than w.
            cands = sorted((r for r in self.running if r.request_id in rank
                            and rank[r.request_id] > rank[w.request_id] and r not in victims),
                           key=lambda r: -rank[r.request_id])
            for v in cands:
                if free >= need:
                    break
                free += len(self.kv_cache_manager.get_block_ids(v.request_id)[0])
                self.running.remove(v)
                self._preempt_request(v, time.monotonic())
                victims.append(v)
            if free < need:
                break
            free -= need
        return victims

    def _plan_profile_step(self) -> None:
        plan = self._profile_plan
        if self._profile_step < 0:
            self._start_profile()
        assert self._profile_rec is not None
        spent = time.perf_counter() - self._profile_rec.started
        if self._profile_step >= len(plan.steps) or spent > self.medha.profile_time_budget_s:
            self._finish_profile()
            self._plan_iteration()
            return
        step = plan.steps[self._profile_step]
        self._profile_step += 1
        self._caps = dict(step.caps)
        self._cap_default = 0
        self._reorder_waiting([rid for rid in step.caps])

    def _reorder_waiting(self, first_ids: list[str]) -> None:
        """Planned waiting requests first, in plan order; the rest keep order."""
        if not first_ids or not self.waiting:
            return
        order = {rid: i for i, rid in enumerate(first_ids)}
        reqs = list(self.waiting)
        reqs.sort(key=lambda r: order.get(r.request_id, len(order)))
        self.waiting.clear()
        self.waiting.extend(reqs)

    def _shape_of(self, output) -> BatchShape:
        chunks, decodes = [], []
        for rid, n in output.num_scheduled_tokens.items():
            req = self.requests[rid]
            before = req.num_computed_tokens - n
            if n == 1 and before >= req.num_prompt_tokens:
                decodes.append(before)
            else:
                chunks.append((n, before))
        return BatchShape(tuple(chunks), tuple(decodes))

    def _account_pauses(self, output) -> None:
        scheduled = {rid for rid in output.num_scheduled_tokens
                     if not rid.startswith(PROFILE_PREFIX)}
        for rid in self._was_scheduled - scheduled:
            req = self.requests.get(rid)
            if req is not None and req.status == RequestStatus.RUNNING and \
                    req.num_computed_tokens < req.num_tokens:
                self.metrics.count_preemption("pause")
        for _ in output.preempted_req_ids or ():
            self.metrics.count_preemption("recompute")
        self._was_scheduled = scheduled

    # ------------------------------------------------------------ outputs
    def update_from_output(self, scheduler_output, model_runner_output):
        if self._pending:
            t0, shape, clean = self._pending.popleft()
            measured = time.perf_counter() - t0
            if shape.num_tokens and clean:
                if self._profile_rec is not None:
                    self._profile_rec.record(shape, measured)
                else:
                    raw = self.predictor.predict(shape)
                    has_prefill = bool(shape.prefill_chunks)
                    pred = raw * self.correction.factor(has_prefill)
                    self.correction.observe(has_prefill, pred, measured)
                    self.metrics.observe_iteration(measured, pred)
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        self._drop_profile_outputs(outputs)
        self._track_deadlines(outputs)
        self.metrics.maybe_flush()
        return outputs

    def _drop_profile_outputs(self, outputs) -> None:
        for eco in outputs.values():
            eco.outputs = [o for o in eco.outputs if not o.request_id.startswith(PROFILE_PREFIX)]
            if eco.finished_requests:
                eco.finished_requests = {r for r in eco.finished_requests
                                         if not r.startswith(PROFILE_PREFIX)}

    def _track_deadlines(self, outputs) -> None:
        now = time.time()
        for eco in outputs.values():
            for o in eco.outputs:
                rid = o.request_id
                if not o.new_token_ids:
                    continue
                st = self._slack.get(rid)
                if st is None:
                    continue
                deadline = self._token_deadline.get(rid)
                if deadline is None:
                    deadline = st.arrival + st.ttft_deadline_s
                    kind = "ttft"
                else:
                    kind = "tbt"
                if now > deadline:
                    self.metrics.count_miss(rid, kind)
                # Slack carried forward: the next deadline counts from this one.
                self._token_deadline[rid] = deadline + st.tbt_deadline_s * len(o.new_token_ids)
                if o.finish_reason is not None:
                    self._forget(rid)

    def _forget(self, rid: str) -> None:
        self._slack.pop(rid, None)
        self._token_deadline.pop(rid, None)
        self.metrics.forget(rid)

    def finish_requests(self, request_ids, finished_status):
        done = super().finish_requests(request_ids, finished_status)
        for r in done:
            self._forget(r.request_id)
        return done


def _positive(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _vllm_version() -> str:
    import vllm

    return vllm.__version__
