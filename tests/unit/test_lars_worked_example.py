"""The paper's worked example: a long request (w=10 s, d=16 s) at t=0 and two
short ones (w=0.5 s, d=1 s) at t=5, under FCFS, EDF, raw slack and LARS."""

import pytest

from medha_vllm.policy.lars import SlackState, priority_key, relative_slack, space_share
from medha_vllm.policy.simulate import SimJob, simulate_single_server

JOBS = [SimJob("long", 0.0, 16.0, 10.0), SimJob("s1", 5.0, 1.0, 0.5), SimJob("s2", 5.0, 1.0, 0.5)]


def first_run(timeline, name):
    return next(t for t, n in timeline if n == name)


def test_fcfs_convoy_shorts_miss():
    finish, tl = simulate_single_server(JOBS, "fcfs")
    assert finish["long"] == pytest.approx(10.0)
    # Shorts wait for the whole long job: both miss their t=6 deadline.
    assert first_run(tl, "s1") == pytest.approx(10.0)
    assert finish["s1"] > 6.0 and finish["s2"] > 6.0


def test_edf_and_raw_slack_preempt_at_once():
    for policy in ("edf", "slack"):
        finish, tl = simulate_single_server(JOBS, policy)
        assert first_run(tl, "s1") == pytest.approx(5.0), policy
        assert max(finish["s1"], finish["s2"]) <= 6.0 + 1e-6


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
    finish, tl = simulate_single_server(JOBS, "lars")
    # The long request keeps running at t=5 (rho 0.6 < 1.0) ...
    assert dict(tl)[5.0] == "long"
    # ... shorts take over once their relative slack drops below the long one's.
    assert 5.15 <= first_run(tl, "s1") <= 5.25
    # Everyone progresses: shorts done ~4 s before FCFS would, long meets d=16.
    assert max(finish["s1"], finish["s2"]) < 6.3
    assert finish["long"] <= 16.0


def test_space_share():
    assert space_share(0.1, 0.2, 0.5) == pytest.approx(0.08)
    assert space_share(0.1, -3.0, 0.5) == pytest.approx(0.1)   # late: whole budget
    assert space_share(0.1, 9.0, 0.5) == pytest.approx(0.05)   # capped at rho_max
