"""The pure planner, decision by decision, on hand-made engine views
(1 ms a token: a 0.1 s budget holds 96 tokens on the 32-token grid)."""

import pytest

from medha_vllm.policy.lars import SlackState
from medha_vllm.policy.planner import EngineView, PlannerSettings, RequestView, plan_iteration
from medha_vllm.policy.predictor import LinearBatchPredictor
from medha_vllm.policy.waiting import WaitingSet
from medha_vllm.policy.work import PrefillWork

MS = LinearBatchPredictor([0.0, 1e-3, 0.0, 0.0, 0.0, 0.0])
SETTINGS = PlannerSettings(0.1, 0.4, 32, 4096, long_request_threshold=4096)


def work(stages=1):
    return PrefillWork(MS, 0.1, 32, 4096, 1 << 16, stages)


def req(rid, prompt, computed=0, total=None, deadline=10.0, arrival=0.0, kv=0, preempted=0,
        in_flight=0):
    w = work().standalone(prompt)
    return RequestView(rid, prompt, total or prompt, computed, in_flight,
                       SlackState(arrival, deadline, w, 0.15), kv, preempted)


def view(running=(), waiting=(), free_slots=8, free_kv=10_000, now=0.0, stages=1,
         num_waiting=None):
    return EngineView(now=now, running=tuple(running), waiting=WaitingSet.of(waiting),
                      num_waiting=len(waiting) if num_waiting is None else num_waiting,
                      free_slots=free_slots, free_kv_blocks=free_kv, block_size=16,
                      token_budget=4096, stages=stages)


def test_running_order_busy_decodes_then_prefills_by_urgency():
    running = [req("relaxed", 2000, 100, deadline=50.0), req("dec", 10, 10, total=11),
               req("busy", 10, 11, total=11), req("urgent", 2000, 100, deadline=2.5)]
    p = plan_iteration(view(running), SETTINGS, work())
    assert p.busy == ("busy",) and p.decodes == ("dec",)
    assert p.running_order == ("busy", "dec", "urgent", "relaxed")
    # The decode takes 1 ms; the urgent prefill gets the largest chunk that
    # fits (96 tokens: 0.001 + 0.096 <= 0.1; 128 would not), the relaxed one
    # nothing: it is paused, keeping its KV cache.
    assert p.chunks == {"urgent": 96} and p.paused == ("relaxed",)
    assert p.budget_reason == "target" and p.predicted_time_s == pytest.approx(0.097)


def test_solo_budget_only_when_alone():
    alone = plan_iteration(view([req("x", 2000, 100)]), SETTINGS, work())
    assert alone.budget_reason == "solo" and alone.chunks == {"x": 384}  # 0.4 s
    # Anything else in the engine, even a waiting request that cannot be
    # admitted yet, means the target budget.
    company = plan_iteration(view([req("x", 2000, 100)], num_waiting=1), SETTINGS, work())
    assert company.budget_reason == "target" and company.chunks == {"x": 96}


def test_solo_budget_only_after_the_quiet_period():
    import dataclasses

    quiet = dataclasses.replace(SETTINGS, solo_quiet_s=0.8)
    lone = [req("x", 2000, 100)]
    # Another request left the engine 0.5 s ago: the target budget still.
    p = plan_iteration(dataclasses.replace(view(lone, now=10.0), last_company=9.5), quiet, work())
    assert p.budget_reason == "target" and p.chunks == {"x": 96}
    # 0.8 s after: the solo budget.
    p = plan_iteration(dataclasses.replace(view(lone, now=10.3), last_company=9.5), quiet, work())
    assert p.budget_reason == "solo" and p.chunks == {"x": 384}
    # Never had company (a lone prompt from the start): solo at once.
    assert plan_iteration(view(lone, now=0.0), quiet, work()).budget_reason == "solo"


def test_waiting_cut_and_free_slot_cap():
    waiting = [req(f"w{i}", 20, deadline=1.0 + i) for i in range(10)]
    p = plan_iteration(view(waiting=waiting, free_slots=3), SETTINGS, work())
    # Only the 3 most urgent are ranked, and at most 3 admitted.
    assert p.waiting_ranked == 3 and p.admit == ("w0", "w1", "w2")
    assert p.chunks == {"w0": 20, "w1": 20, "w2": 20}
    full = plan_iteration(view(waiting=waiting, free_slots=0), SETTINGS, work())
    assert full.waiting_ranked == 0 and full.admit == () and full.chunks == {}
    import dataclasses

    capped = dataclasses.replace(SETTINGS, waiting_rank_limit=2)
    assert plan_iteration(view(waiting=waiting), capped, work()).admit == ("w0", "w1")


def test_eviction_frees_least_urgent_prefills_only_when_enough():
    running = [req("mid", 800, 320, deadline=20.0, kv=20), req("low", 800, 160, deadline=90.0, kv=10)]
    urgent = req("u", 400, deadline=0.5)  # 25 blocks
    p = plan_iteration(view(running, [urgent], free_kv=20), SETTINGS, work())
    # 20 free + 10 of the least urgent one >= 25: only "low" is freed.
    assert p.victims == ("low",) and p.admit == ("u",) and "u" in p.chunks
    assert "low" not in p.running_order
    # 5 free + 10 < 25: "mid" (less urgent than u too) goes as well.
    both = plan_iteration(view(running, [urgent], free_kv=5), SETTINGS, work())
    assert both.victims == ("low", "mid")
    # 640 tokens need 40 blocks > 5 + 30: freeing anyone would not admit it.
    big = req("u", 640, deadline=0.5)
    none = plan_iteration(view(running, [big], free_kv=5), SETTINGS, work())
    assert none.victims == () and none.admit == ()
    # The budget the waiting request would have had goes to running work.
    assert none.chunks and set(none.chunks) <= {"mid", "low"}


def test_a_freed_request_never_evicts():
    running = [req("low", 800, 160, deadline=90.0, kv=10)]
    late = req("u", 400, deadline=0.01, preempted=1)
    p = plan_iteration(view(running, [late], free_kv=20), SETTINGS, work())
    assert p.victims == () and p.admit == () and p.chunks == {"low": 96}


def test_only_less_urgent_prefills_are_victims():
    running = [req("urgent", 800, 160, deadline=0.3, kv=30)]
    w = req("w", 400, deadline=50.0)
    p = plan_iteration(view(running, [w], free_kv=0), SETTINGS, work())
    assert p.victims == () and p.admit == ()


def test_drain_split_with_stages():
    long = req("L", 8000, 8000 - 1500)
    one = plan_iteration(view([long]), SETTINGS, work(1))
    two = plan_iteration(view([long], stages=2), SETTINGS, work(2))
    assert one.drain_split == () and one.chunks["L"] == 384
    # 1,500 left over 2 stages: cap 750, above the solo chunk: no split yet...
    assert two.drain_split == () and two.chunks["L"] == 384
    near = plan_iteration(view([req("L", 8000, 8000 - 600)], stages=2), SETTINGS, work(2))
    assert near.drain_split == ("L",) and near.chunks["L"] == 300
    short = plan_iteration(view([req("s", 2000, 2000 - 600)], stages=2), SETTINGS, work(2))
    assert short.drain_split == ()  # not long: never split


def test_fcfs_and_edf_orders():
    import dataclasses

    a = req("a", 2000, 100, arrival=0.0, deadline=100.0)
    b = req("b", 2000, 100, arrival=1.0, deadline=2.0)
    for order, first in (("fcfs", "a"), ("edf", "b"), ("lars", "b")):
        p = plan_iteration(view([a, b], now=1.0), dataclasses.replace(SETTINGS, order=order), work())
        assert p.running_order[0] == first, order


def test_the_waiting_table_ranks_as_priority_of_with_the_starvation_guard():
    """The vectorised waiting cut (RankTable.order) and the planner's exact
    key agree, starving requests included (random queues, fixed seed)."""
    import random

    from medha_vllm.policy.planner import priority_of

    rng = random.Random(0)
    w = work()
    for _ in range(200):
        qs = [req(f"r{i}", rng.randint(1, 5000), deadline=rng.uniform(0.5, 5.0),
                  arrival=rng.uniform(0.0, 10.0)) for i in range(rng.randint(2, 30))]
        now, guard = rng.uniform(0.0, 30.0), rng.choice([0.0, 1.0, 2.0, 3.5])
        ws = WaitingSet.of(qs)
        fast = [qs[i].req_id for i in ws.table.order(ws.slots, now, "lars", guard)]
        exact = [r.req_id for r in sorted(qs, key=lambda r: priority_of(r, now, w, "lars", guard))]
        assert fast == exact
        if guard:
            starving = [r.req_id for r in qs if now >= r.slack.arrival + guard * r.slack.ttft_deadline_s]
            assert set(exact[:len(starving)]) == set(starving)
