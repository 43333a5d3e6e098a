"""Every vLLM scheduler internal that Medha touches, in one module.

MedhaScheduler (and the start-up profile) reach vLLM only through the
functions below; `check_seams()` verifies, when the scheduler starts and in
tests/sched/test_vllm_seams.py, that each internal still exists with the
signature this module was written against (vLLM 0.32). A vLLM release that
moves one fails at start-up with a message naming it, instead of failing
mid-serving with an AttributeError.

The seams:
- chunk cap: `Scheduler._mamba_block_aligned_split(request, num_new_tokens,
  num_new_local_computed_tokens=0, num_external_computed_tokens=0)` is called
  by both scheduling loops for every request once its chunk is computed, when
  `need_mamba_block_aligned_split` is set. It is vLLM's only per-request seam
  on the chunk size; Medha enables it and caps the chunk there (delegating to
  the real Mamba alignment for Mamba models).
- preemption: `Scheduler._preempt_request(request, timestamp)` frees the
  request's blocks, resets it for recompute and prepends it to `waiting`.
- queues: `running` (a list, victims taken from its end) and `waiting` (a
  `FCFSRequestQueue`, a deque, re-ordered in place; Medha installs its
  subclass that keeps the membership, waiting_queue.py). vLLM keeps requests
  that hold KV blocks in `kv_holding_waiting`, so one in `waiting` has
  computed nothing.
- KV state: `kv_cache_manager.block_pool.get_num_free_blocks()` and
  `kv_cache_manager.get_block_ids(request_id)`.
- requests: `Request(request_id, prompt_token_ids, sampling_params,
  pooling_params, ..., block_hasher=...)` and its counters
  `num_computed_tokens`, `num_in_flight_tokens`, `num_tokens`,
  `num_prompt_tokens`, `arrival_time`, `priority`, `status`.
- block hashing: `get_request_block_hasher(hash_block_size, caching_hash_fn)` and
  `get_hash_fn_by_name(name)` (synthetic profile requests need block hashes
  when prefix caching is on).
"""

from __future__ import annotations

import inspect
from collections import deque
from typing import Any, Callable

from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.request_queue import FCFSRequestQueue, SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

CHUNK_CAP_HOOK = "_mamba_block_aligned_split"
# Waiting requests in these states may be admitted this iteration.
ADMISSIBLE = (RequestStatus.WAITING, RequestStatus.PREEMPTED)


class VllmSeamError(RuntimeError):
    """A vLLM internal that Medha relies on is missing or has changed."""


def _params(obj: Callable) -> list[str]:
    return list(inspect.signature(obj).parameters)


def _hasher_fns():
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher

    return get_request_block_hasher, get_hash_fn_by_name


# (what, getter, expected leading parameter names)
_SIGNATURES: tuple[tuple[str, Callable[[], Callable], list[str]], ...] = (
    ("Scheduler._mamba_block_aligned_split", lambda: getattr(Scheduler, CHUNK_CAP_HOOK),
     ["self", "request", "num_new_tokens", "num_new_local_computed_tokens",
      "num_external_computed_tokens"]),
    ("Scheduler._preempt_request", lambda: Scheduler._preempt_request,
     ["self", "request", "timestamp"]),
    ("Scheduler.schedule", lambda: Scheduler.schedule, ["self", "throttle_prefills"]),
    ("Scheduler.update_from_output", lambda: Scheduler.update_from_output,
     ["self", "scheduler_output", "model_runner_output"]),
    ("Scheduler.finish_requests", lambda: Scheduler.finish_requests,
     ["self", "request_ids", "finished_status"]),
    ("Request.__init__", lambda: Request.__init__,
     ["self", "request_id", "prompt_token_ids", "sampling_params", "pooling_params"]),
    ("get_request_block_hasher", lambda: _hasher_fns()[0], ["hash_block_size", "caching_hash_fn"]),
    ("get_hash_fn_by_name", lambda: _hasher_fns()[1], ["hash_fn_name"]),
)
_REQUEST_FIELDS = ("request_id", "num_computed_tokens", "num_in_flight_tokens", "num_tokens",
                   "num_prompt_tokens", "arrival_time", "priority", "status", "sampling_params")
_SCHEDULER_ATTRS = ("running", "waiting", "requests", "kv_cache_manager", "kv_cache_config",
                    "max_num_running_reqs", "max_num_scheduled_tokens", "max_model_len",
                    "block_size", "hash_block_size", "finished_req_ids", "policy",
                    "need_mamba_block_aligned_split", "vllm_config", "connector")


def check_seams(scheduler: Any | None = None) -> None:
    """Raise VllmSeamError naming every internal that does not match.
    With a constructed scheduler, its instance attributes are checked too."""
    problems = []
    for what, get, expected in _SIGNATURES:
        try:
            got = _params(get())
        except (AttributeError, ImportError, ValueError, TypeError) as e:
            problems.append(f"{what}: missing ({e})")
            continue
        if got[:len(expected)] != expected:
            problems.append(f"{what}: parameters {got[:len(expected)]}, expected {expected}")
    # waiting_queue.py overrides the deque mutators vLLM's queue is built on.
    if not issubclass(FCFSRequestQueue, deque):
        problems.append("FCFSRequestQueue: no longer a deque")
    probe = Request("medha-seam-probe", [1, 2, 3], SamplingParams(max_tokens=1), None)
    problems += [f"Request.{f}: missing" for f in _REQUEST_FIELDS if not hasattr(probe, f)]
    if scheduler is not None:
        problems += [f"Scheduler.{a}: missing" for a in _SCHEDULER_ATTRS
                     if not hasattr(scheduler, a)]
        kvm = getattr(scheduler, "kv_cache_manager", None)
        for a in ("block_pool", "get_block_ids"):
            if kvm is not None and not hasattr(kvm, a):
                problems.append(f"KVCacheManager.{a}: missing")
        if kvm is not None and not hasattr(getattr(kvm, "block_pool", None),
                                           "get_num_free_blocks"):
            problems.append("BlockPool.get_num_free_blocks: missing")
    if problems:
        import vllm

        raise VllmSeamError(
            f"medha-vllm cannot drive this vLLM ({vllm.__version__}): " + "; ".join(problems)
            + ". See medha_vllm/vllm_seams.py for what each internal is used for.")


# ------------------------------------------------------------------ the seams
def use_fcfs_waiting_queue(sched: Scheduler) -> bool:
    """Make `waiting` Medha's FCFS deque (waiting_queue.py: vLLM's
    FCFSRequestQueue that also keeps its membership; Medha orders it itself
    every iteration, and vLLM's priority heap would fight that order).
    Returns True if vLLM's policy was not FCFS (superseded)."""
    from medha_vllm.waiting_queue import IndexedWaitingQueue

    superseded = sched.policy != SchedulingPolicy.FCFS
    sched.policy = SchedulingPolicy.FCFS
    if not isinstance(sched.waiting, IndexedWaitingQueue):
        sched.waiting = IndexedWaitingQueue(list(sched.waiting))
    return superseded


def drop_local_prefill_cadence(sched: Scheduler) -> int:
    """vLLM 0.33 applies `--prefill-schedule-interval N` without data
    parallelism too (`local_prefill_interval`: prefills held until N steps
    passed); Medha decides when prefills run, so the hold is turned off.
    Returns the interval dropped (1: nothing to do; 0.32 has no such hold)."""
    interval = int(getattr(sched, "local_prefill_interval", 1) or 1)
    if interval > 1:
        sched.local_prefill_interval = 1
        sched.last_prefill_step = -1
    return interval


def enable_chunk_cap_hook(sched: Scheduler) -> bool:
    """Turn on the per-request chunk hook; returns whether vLLM needed the real
    Mamba alignment (then the hook must delegate to it)."""
    mamba = bool(sched.need_mamba_block_aligned_split)
    sched.need_mamba_block_aligned_split = True
    return mamba


def take_over(sched: Scheduler, log: Any) -> bool:
    """Everything a new MedhaScheduler changes in vLLM's scheduler once: the
    seams are checked (VllmSeamError), `waiting` becomes FCFS, vLLM's prefill
    cadence is dropped and the chunk hook turned on. Returns whether the hook
    must delegate to vLLM's Mamba alignment."""
    check_seams(sched)
    if use_fcfs_waiting_queue(sched):
        log.info("Medha: ordering by (priority, relative slack); vLLM's "
                 "--scheduling-policy is superseded")
    dropped = drop_local_prefill_cadence(sched)
    if dropped > 1:
        log.warning("Medha: --prefill-schedule-interval %d is not applied on this "
                    "engine (Medha decides when prefill chunks run)", dropped)
    return enable_chunk_cap_hook(sched)


def free_kv_blocks(sched: Scheduler) -> int:
    return sched.kv_cache_manager.block_pool.get_num_free_blocks()


def kv_blocks_of(sched: Scheduler, req_id: str) -> int:
    """Blocks a request holds (first KV-cache group, the full-attention one)."""
    return len(sched.kv_cache_manager.get_block_ids(req_id)[0])


def preempt_for_recompute(sched: Scheduler, request: Request, timestamp: float) -> None:
    """Free a running request's KV cache now; vLLM recomputes it later."""
    sched.running.remove(request)
    sched._preempt_request(request, timestamp)


def reorder_running(sched: Scheduler, order: list[str]) -> None:
    """Put `running` in the plan's order (vLLM's victim is running[-1])."""
    running = sched.running
    if len(running) == len(order) and all(r.request_id == o for r, o in zip(running, order)):
        return  # already in order (the usual case: decodes keep their places)
    pos = {rid: i for i, rid in enumerate(order)}
    rank = pos.get
    end = len(pos)
    sched.running.sort(key=lambda r: rank(r.request_id, end))


def reorder_waiting(sched: Scheduler, first: list[Request]) -> None:
    """Requests in `first` to the front of `waiting`, in that order; the rest
    keep theirs. NOTE(medha): a few removals from the deque (C speed) rather
    than a re-sort of a 1,000-request queue every iteration."""
    if not first or not sched.waiting:
        return
    moved = []
    for r in first:
        try:
            sched.waiting.remove_request(r)
        except ValueError:
            continue  # not in this queue
        moved.append(r)
    sched.waiting.prepend_requests(reversed(moved))


def admissible_waiting(sched: Scheduler) -> list[Request]:
    return [r for r in sched.waiting if r.status in ADMISSIBLE]


def is_running(request: Request) -> bool:
    return request.status == RequestStatus.RUNNING


def block_hasher(sched: Scheduler):
    """The engine's block hasher (prefix caching needs block hashes for
    every request it caches, synthetic ones included); None without it."""
    cc = sched.vllm_config.cache_config
    if not cc.enable_prefix_caching:
        return None
    get_request_block_hasher, get_hash_fn_by_name = _hasher_fns()
    fn = get_hash_fn_by_name(cc.prefix_caching_hash_algo)
    # vLLM 0.33 hashes a few tokens ahead with EAGLE-style drafts (its engine
    # passes `num_hash_lookahead_tokens`; 0 otherwise, and 0.32 has neither).
    lookahead = int(getattr(sched.vllm_config, "num_hash_lookahead_tokens", 0) or 0)
    if lookahead:
        return get_request_block_hasher(sched.hash_block_size, fn,
                                        num_hash_lookahead_tokens=lookahead)
    return get_request_block_hasher(sched.hash_block_size, fn)


def synthetic_request(req_id: str, prompt_token_ids: list[int], pretend_computed: int,
                      hasher) -> Request:
    """A greedy request that never stops by itself. NOTE(medha): admitted like
    a request whose prefix KV arrived from elsewhere: `pretend_computed` tokens
    get blocks, nothing computes them (the profile times attention at long
    context without paying for its prefill; timing does not depend on KV values)."""
    req = Request(request_id=req_id, prompt_token_ids=prompt_token_ids,
                  sampling_params=SamplingParams(max_tokens=1 << 20, ignore_eos=True,
                                                 temperature=0.0),
                  pooling_params=None, block_hasher=hasher)
    req.num_computed_tokens = pretend_computed
    return req


def abort_status() -> RequestStatus:
    return RequestStatus.FINISHED_ABORTED
