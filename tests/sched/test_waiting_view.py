"""The planner's view of the waiting queue from Medha's indexed queue
(membership and cached rank-table slots, engine_view._indexed_waiting) is the
one a walk of the whole queue gives (engine_view._scanned_waiting), on the
real scheduler through arrivals, admissions, a recompute preemption, an abort
of a waiting request, a request made inadmissible and a predictor change."""

from __future__ import annotations

import random

from harness import Driver, make_request, make_scheduler
from vllm.v1.request import RequestStatus

from medha_vllm import engine_view
from medha_vllm.policy.predictor import LinearBatchPredictor
from medha_vllm.waiting_queue import IndexedWaitingQueue

COST = LinearBatchPredictor([0.0, 1e-3, 0.0, 0.0, 0.0, 0.0])


def ranked(waiting, k, now):
    """The candidates the planner ranks exactly (their order is its job)."""
    return sorted(v.req_id for v in waiting.candidates(k, now, "lars", 4.0))


def both_views(s, view, ks=(1, 3, 8, 200)):
    now = s.clock()
    a = engine_view._indexed_waiting(s, s.waiting, view)
    b = engine_view._scanned_waiting(s, view)
    for k in ks:
        assert ranked(a, k, now) == ranked(b, k, now), k
    return ranked(a, 8, now)


def view_fn(s):
    return lambda r, kv: engine_view.RequestView(
        r.request_id, r.num_prompt_tokens, r.num_tokens, r.num_computed_tokens,
        r.num_in_flight_tokens, s.slo.state(r), kv, r.num_preemptions)


def test_indexed_waiting_view_equals_a_walk_of_the_queue(synthetic_path):
    s = make_scheduler(synthetic_path, max_num_seqs=4, num_blocks=400,
                       medha={"target_batch_time_s": 0.1, "solo_batch_time_s": 0.1})
    s.set_predictor(COST)
    assert isinstance(s.waiting, IndexedWaitingQueue)
    rng = random.Random(0)
    arrivals = [make_request(f"q{i}", rng.choice([40, 200, 900, 3000]), rng.uniform(0, 2),
                             max_tokens=4, ttft_deadline_s=rng.choice([0.5, 2.0, 8.0]))
                for i in range(40)]
    d = Driver(s, COST.predict, arrivals)
    view = view_fn(s)
    seen = set()
    for step in range(60):
        d.step()
        if len(s.waiting):
            seen.add(tuple(both_views(s, view)))
        if step == 10:  # a waiting request becomes inadmissible, one is aborted
            s.waiting[0].status = RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR
            s.finish_requests([s.waiting[-1].request_id], RequestStatus.FINISHED_ABORTED)
            both_views(s, view)
        if step == 20:  # a running request is freed for recompute (back to waiting)
            victim = s.running[-1]
            s.running.remove(victim)
            s._preempt_request(victim, 0.0)
            both_views(s, view)
        if step == 30:  # a new predictor: every slack state and rank row made anew
            s.set_predictor(LinearBatchPredictor([0.0, 2e-3, 0.0, 0.0, 0.0, 0.0]))
            both_views(s, view)
    assert len(seen) > 5  # the queue's ranking moved through many states
