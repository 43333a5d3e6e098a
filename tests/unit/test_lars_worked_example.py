"""The paper's worked example on the simulator that drives the real planner:
a long request (w=10 s, d=16 s) at t=0 and two short ones (w=0.5 s, d=1 s)
at t=5, under FCFS, EDF and LARS. With 1 ms a token, w is 10,000 and 500
tokens; a 0.1 s budget fits 96-token chunks. (The same example runs on the
real MedhaScheduler in tests/sched/test_step_tables.py.)"""

import pytest

from medha_vllm.policy.lars import SlackState, priority_key, relative_slack, space_share
from medha_vllm.policy.planner import PlannerSettings
from medha_vllm.policy.predictor import LinearBatchPredictor
from medha_vllm.policy.simulate import SimRequest, simulate_engine

MS = LinearBatchPredictor([0.0, 1e-3, 0.0, 0.0, 0.0, 0.0])


def run(order):
    reqs = [SimRequest("long", 0.0, 10_000, 1, ttft_deadline_s=16.0),
            SimRequest("s1", 5.0, 500, 1, ttft_deadline_s=1.0),
            SimRequest("s2", 5.0, 500, 1, ttft_deadline_s=1.0)]
    res = simulate_engine(reqs, MS, PlannerSettings(0.1, 0.1, 32, 4096, space_sharing=False,
                                                    order=order))
    first = {r.req_id: r.first_token for r in reqs}
    start = {rid: next(s.t for s in res.steps if rid in s.plan.chunks) for rid in first}
    return first, start


def test_fcfs_convoy_shorts_miss():
    first, start = run("fcfs")
    assert first["long"] == pytest.approx(10.064, abs=1e-6)
    # Shorts wait for the whole long job: both miss their t=6 deadline.
    assert start["s1"] == pytest.approx(9.984)  # the long one's last, small chunk
    assert first["s1"] > 6.0 and first["s2"] > 6.0


def test_edf_preempts_at_once():
    first, start = run("edf")
    assert start["s1"] == pytest.approx(5.088)  # first step after t=5
    assert max(first["s1"], first["s2"]) == pytest.approx(6.12)


def test_lars_relative_slack_values_at_t5():
    long = SlackState(0.0, 16.0, 10.0, 0.0)
    short = SlackState(5.0, 1.0, 0.5, 0.0)
    # Long has done 5 s of work by t=5: rho = (16 - 5 - 5) / 10 = 0.6.
    assert relative_slack(long, 5.0, 5.0) == pytest.approx(0.6)
    # Shorts arrive with rho = (1 - 0.5) / 0.5 = 1.0: less urgent than the long one.
    assert relative_slack(short, 5.0, 0.5) == pytest.approx(1.0)
    assert priority_key(long, 5.0, 5.0) < priority_key(short, 5.0, 0.5)
    # ...until their rho falls below 0.6: slack 0.3 at t=5.2.
    # (the long one kept running, so its remaining work is 10 - 5.21 s).
    assert priority_key(short, 5.21, 0.5) < priority_key(long, 5.21, 10.0 - 5.21)


def test_lars_length_aware_order():
    first, start = run("lars")
    # The long request keeps running past t=5 (rho 0.6 < the shorts')...
    # ... shorts take over once their relative slack drops below the long one's.
    assert 5.2 <= start["s1"] <= 5.3
    # Everyone progresses: shorts done ~4 s before FCFS would, long meets d=16.
    assert max(first["s1"], first["s2"]) < 6.4
    assert first["long"] <= 16.0


def test_space_share():
    assert space_share(0.1, 0.2, 0.5) == pytest.approx(0.08)
    assert space_share(0.1, -3.0, 0.5) == pytest.approx(0.1)   # late: whole budget
    assert space_share(0.1, 9.0, 0.5) == pytest.approx(0.05)   # capped at rho_max
