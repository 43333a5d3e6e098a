"""Medha's waiting queue (medha_vllm/waiting_queue.py) keeps `members` in
step with the deque under every mutator vLLM's queue API is built on, in
random sequences (Hypothesis), and is still vLLM's FCFSRequestQueue."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.request import Request

from medha_vllm.waiting_queue import IndexedWaitingQueue

POOL = [Request(f"r{i}", [1, 2, 3], SamplingParams(max_tokens=1), None) for i in range(12)]

OPS = st.lists(st.tuples(st.sampled_from(
    ["add_request", "prepend_request", "prepend_requests", "pop_request", "remove_request",
     "remove_requests", "append", "appendleft", "extend", "extendleft", "pop", "insert",
     "delitem", "setitem", "clear", "iadd", "rotate"]),
    st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=4, unique=True)),
    max_size=40)


def apply(q, op, picks):
    """One operation with requests not in the queue (vLLM never holds a
    request twice), or ones in it for removals."""
    inside = [r for r in POOL if r in q]
    outside = [POOL[i] for i in picks if POOL[i] not in q]
    if op in ("pop_request", "pop", "delitem", "remove_request", "setitem") and not inside:
        return
    if op == "pop_request":
        q.pop_request()
    elif op == "pop":
        q.pop()
    elif op == "delitem":
        del q[picks[0] % len(q)]
    elif op == "remove_request":
        q.remove_request(inside[picks[0] % len(inside)])
    elif op == "remove_requests":
        q.remove_requests([POOL[i] for i in picks])  # some may be absent
    elif op == "setitem":
        if outside:
            q[picks[0] % len(q)] = outside[0]
    elif op == "clear":
        q.clear()
    elif op == "rotate":
        q.rotate(picks[0])
    elif not outside:
        return
    elif op in ("add_request", "prepend_request", "append", "appendleft"):
        getattr(q, op)(outside[0])
    elif op == "insert":
        q.insert(picks[0] % (len(q) + 1), outside[0])
    elif op == "iadd":
        q += outside
    else:  # prepend_requests, extend, extendleft
        getattr(q, op)(outside)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_members_follow_the_deque_under_every_mutator(ops):
    q = IndexedWaitingQueue()
    q.slots_generation = 0
    for op, picks in ops:
        apply(q, op, picks)
        held = {r.request_id: r for r in q}
        assert q.members == held, op
        assert len(held) == len(q)  # no request twice
        # A cached slot never outlives the request's stay in the queue.
        assert set(q.slots) <= set(held)
        for rid in held:
            q.slots.setdefault(rid, 0)  # as the view builder caches them


def test_it_is_vllms_fcfs_queue_and_keeps_fcfs_order():
    q = IndexedWaitingQueue(POOL[:3])
    assert isinstance(q, FCFSRequestQueue)
    q.prepend_request(POOL[5])
    q.add_request(POOL[6])
    assert [r.request_id for r in q] == ["r5", "r0", "r1", "r2", "r6"]
    assert q.pop_request() is POOL[5] and q.peek_request() is POOL[0]
    q.remove_requests([POOL[1], POOL[9]])
    assert [r.request_id for r in q] == ["r0", "r2", "r6"] and set(q.members) == {"r0", "r2", "r6"}
    assert [r.request_id for r in q.copy()] == ["r0", "r2", "r6"]
