"""The adapter's read side: vLLM's scheduler state as the pure planner's
`EngineView`, and a scheduled batch as the predictor's `BatchShape`.

Everything here reads; nothing changes vLLM's state (the write side is
`MedhaScheduler._apply`, through the seams in vllm_seams.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medha_vllm import vllm_seams as seams
from medha_vllm.policy.planner import EngineView, RequestView
from medha_vllm.policy.predictor import BatchShape
from medha_vllm.policy.waiting import WaitingSet
from medha_vllm.waiting_queue import IndexedWaitingQueue


def build_view(sched: Any) -> EngineView:
    """The planner's snapshot of `sched` (a MedhaScheduler) now."""
    free_slots = sched.max_num_running_reqs - len(sched.running)
    states, make_state = sched.slo.states, sched.slo.state
    # NOTE(medha): built for every running request each iteration, so the
    # tuple is made directly (tuple.__new__: no NamedTuple __new__ frame).
    new = tuple.__new__

    def view(r, kv: int) -> RequestView:
        return new(RequestView, (r.request_id, r.num_prompt_tokens, r.num_tokens,
                                 r.num_computed_tokens, r.num_in_flight_tokens,
                                 states.get(r.request_id) or make_state(r), kv,
                                 r.num_preemptions))

    running = tuple([view(r, seams.kv_blocks_of(sched, r.request_id)
                          if r.num_computed_tokens < r.num_prompt_tokens else 0)
                     for r in sched.running])
    # NOTE(medha): waiting requests matter only when a running slot is free.
    if free_slots <= 0:
        waiting = WaitingSet.empty()
    elif isinstance(sched.waiting, IndexedWaitingQueue) and sched.connector is None:
        waiting = _indexed_waiting(sched, sched.waiting, view)
    else:
        waiting = _scanned_waiting(sched, view)
    return EngineView(
        now=sched.clock(), running=running, waiting=waiting, num_waiting=len(sched.waiting),
        free_slots=free_slots, free_kv_blocks=seams.free_kv_blocks(sched),
        block_size=sched.block_size, token_budget=sched.max_num_scheduled_tokens,
        stages=sched.stages, batches_in_flight=len(sched.ledger),
        last_company=sched.last_company, **kvp_view(sched))


def kvp_view(sched: Any) -> dict:
    """The planner's view of the KV groups (nothing without KVP)."""
    if getattr(sched, "kvp", None) is None:
        return {}
    queue = sched.kv_cache_manager.block_pool.free_block_queue
    return {"free_kv_per_group": tuple(queue.free_in(g) for g in range(sched.kvp.groups)),
            "kv_shard_tokens": sched.kvp.shard_tokens}


def _indexed_waiting(sched: Any, q: IndexedWaitingQueue, view) -> WaitingSet:
    """From the queue's membership and its cached rank-table slots: only the
    requests that entered since the last iteration are looked at. With no KV
    connector, a request in `waiting` holds no KV and has computed nothing
    (vLLM 0.32 keeps block holders in `kv_holding_waiting`); admissibility
    (status) is checked for the requests the planner picks, at pick time."""
    slo, slots = sched.slo, q.slots
    table = slo.table
    if q.slots_generation != table.generation:  # the predictor changed: rows made anew
        slots.clear()
        q.entered = list(q.members.values())
        q.slots_generation = table.generation
    if q.entered:
        members, slot = q.members, slo.slot
        for r in q.entered:
            if members.get(r.request_id) is r and r.request_id not in slots:
                slots[r.request_id] = slot(r)
        q.entered = []
    members, ids = q.members, list(slots)
    ok = seams.ADMISSIBLE

    def view_of(i: int):
        r = members[ids[i]]
        return view(r, 0) if r.status in ok else None

    return WaitingSet(np.fromiter(slots.values(), dtype=np.int64, count=len(ids)), table,
                      view_of)


def _scanned_waiting(sched: Any, view) -> WaitingSet:
    """By walking the queue (a KV connector, or a queue that is not Medha's)."""
    fresh, others = [], []
    for r in seams.admissible_waiting(sched):
        (others if r.num_computed_tokens else fresh).append(r)
    lookup = sched.slo.table.lookup
    slots = [lookup(r.request_id) for r in fresh]
    if None in slots:  # requests seen for the first time
        slots = [s if s is not None else sched.slo.slot(r) for s, r in zip(slots, fresh)]
    return WaitingSet(np.array(slots, dtype=np.int64), sched.slo.table,
                      lambda i: view(fresh[i], 0), tuple(view(r, 0) for r in others))


def batch_shape(output: Any, requests: dict) -> BatchShape:
    """The shape of the batch a SchedulerOutput dispatches: prefill chunks
    (tokens, tokens before) and decodes (context length)."""
    chunks, decodes = [], []
    for rid, n in output.num_scheduled_tokens.items():
        req = requests[rid]
        before = req.num_computed_tokens - n
        if n == 1 and before >= req.num_prompt_tokens:
            decodes.append(before)
        else:
            chunks.append((n, before))
    return BatchShape(tuple(chunks), tuple(decodes))


class PauseTracker:
    """Counts Medha's preemptions from what vLLM scheduled: a request
    scheduled last iteration, running and unfinished, that got nothing now was
    paused between chunks; vLLM's own preemptions are recomputes."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics
        self._was_scheduled: set[str] = set()

    def observe(self, output: Any, requests: dict, profiling: bool) -> None:
        scheduled = output.num_scheduled_tokens.keys()
        if profiling:  # profile batches are dictated, not planned
            self._was_scheduled = set()
            return
        for rid in self._was_scheduled - scheduled:  # set ops in C
            req = requests.get(rid)
            if req is not None and seams.is_running(req) and \
                    req.num_computed_tokens < req.num_tokens:
                self.metrics.count_preemption("pause")
        for _ in output.preempted_req_ids or ():
            self.metrics.count_preemption("recompute")
        self._was_scheduled = set(scheduled)
