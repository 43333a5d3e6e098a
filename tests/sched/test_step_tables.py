"""Step tables of the real MedhaScheduler on vLLM's real Scheduler and
KV-cache manager, model outputs faked (harness.py). Per step: which requests
run with how many tokens, who is paused (a running prefill given no chunk,
KV kept), who is freed for recompute.

The predictor is exact and simple: 1 ms per token, nothing else (SPP: 0.1 ms
per token), so a 0.1 s budget fits 96 tokens on the 32-token chunk grid
(128 would take 0.128 s) and every row below can be checked by hand.
"""

from __future__ import annotations

import dataclasses

import pytest
from harness import Driver, compress, make_request, make_scheduler

from medha_vllm.policy.predictor import LinearBatchPredictor

MS_PER_TOKEN = LinearBatchPredictor([0.0, 1e-3, 0.0, 0.0, 0.0, 0.0])
BUDGET = {"target_batch_time_s": 0.1, "solo_batch_time_s": 0.1}


def scheduler(model, predictor=MS_PER_TOKEN, medha=None, **kw):
    s = make_scheduler(model, medha={**BUDGET, **(medha or {})}, **kw)
    s.set_predictor(predictor)
    return s


def worked_example():
    """The paper's example: long w=10 s, d=16 s at t=0; two shorts w=0.5 s,
    d=1 s at t=5 (10,000 and 500 tokens at 1 ms a token)."""
    return [make_request("long", 10_000, 0.0, ttft_deadline_s=16.0),
            make_request("s1", 500, 5.0, ttft_deadline_s=1.0),
            make_request("s2", 500, 5.0, ttft_deadline_s=1.0)]


def run_worked_example(model, order="lars"):
    s = scheduler(model, medha={"space_sharing": False})
    s.settings = dataclasses.replace(s.settings, order=order)
    d = Driver(s, MS_PER_TOKEN.predict, worked_example())
    d.run()
    return d


def test_worked_example_lars(synthetic_path):
    d = run_worked_example(synthetic_path)
    alternate = [(1, {"s1": 96}, ("s2", "long"), ()), (1, {"s2": 96}, ("s1", "long"), ())]
    assert compress(d.rows) == [
        # t = 0 .. 5.184: the long one alone, 96-token chunks (0.096 s each).
        # The shorts arrive at t=5.0 and wait two steps: at t=5.088 and 5.184
        # their rho = (5 + 1 - t - 0.5) / 0.5 is 0.82 and 0.63, above the
        # long one's constant (16 - t - (10 - t)) / 10 = 0.6.
        (55, {"long": 96}, (), ()),
        # t = 5.28: s1's rho 0.44 < 0.6: the long one is paused (KV kept).
        (1, {"s1": 96}, ("long",), ()),
        # Then the shorts alternate: the running one keeps its slack, the
        # waiting one's falls below it (everyone progresses).
        (1, {"s2": 96}, ("s1", "long"), ()),
        *alternate * 4,
        # Both have 20 tokens left (500 = 5 x 96 + 20); the long one takes
        # the rest of the budget on the grid: 32 tokens (0.1 - 0.04 > 0.032).
        (1, {"s1": 20, "s2": 20, "long": 32}, (), ()),
        # 10,000 - 55 x 96 - 32 = 4,688 = 48 x 96 + 80 tokens left.
        (48, {"long": 96}, (), ()),
        (1, {"long": 80}, (), ()),
        (1, {}, (), ()),  # vLLM reports the finished request
    ]
    assert d.first_token["s1"] == d.first_token["s2"] == pytest.approx(6.312)
    assert d.first_token["long"] == pytest.approx(11.0)  # deadline 16: met


def test_worked_example_fcfs_convoys_and_edf_preempts_at_once(synthetic_path):
    fcfs = run_worked_example(synthetic_path, "fcfs")
    # FCFS: the shorts wait for the whole long prefill (10 s; its last chunk
    # of 16 tokens shares a batch with them) and miss t=6.
    assert fcfs.first_token["long"] == pytest.approx(10.064)
    assert min(fcfs.first_token["s1"], fcfs.first_token["s2"]) > 10.0
    edf = run_worked_example(synthetic_path, "edf")
    # EDF: deadline 6 < 16, the shorts take over at the first step after
    # they arrive (t = 5.088), not 0.2 s later as under LARS.
    first_short = next(r for r in edf.rows if "s1" in r.run or "s2" in r.run)
    assert first_short.t == pytest.approx(5.088)
    # 1 s of short work from t = 5.088 (the step in progress at t=5 ends then).
    assert max(edf.first_token["s1"], edf.first_token["s2"]) == pytest.approx(6.12)


def run_space_sharing(model, space_sharing, first_token_yield=False):
    s = scheduler(model, medha={"long_request_threshold": 4096, "space_sharing": space_sharing,
                                "first_token_yield": first_token_yield})
    d = Driver(s, MS_PER_TOKEN.predict, [
        make_request("L1", 8000, 0.0), make_request("L2", 6000, 0.0),
        make_request("s", 300, 1.0)])
    d.run()
    return d


def test_space_sharing_caps_the_long_prefill_and_admits_one_long(synthetic_path):
    # The paper's space sharing alone (first-token yield off: see the next test).
    shared, plain = run_space_sharing(synthetic_path, True), run_space_sharing(synthetic_path, False)
    for d in (shared, plain):
        # At most one long prefill per batch, with or without space sharing.
        assert all(not ({"L1", "L2"} <= set(r.run)) for r in d.rows)
    window = [(round(r.t, 3), r.run, r.paused) for r in shared.rows if 0.9 < r.t < 1.5]
    assert window == [
        (0.96, {"L1": 96}, ("L2",)),
        # The short arrived at t=1.0. L2 is the most urgent, but its rho
        # (>= 0.5) caps it at 0.1 x (1 - 0.5) = 0.05 s: 32 tokens; the short
        # gets the rest of the budget in the same batch (64 tokens, 0.064 s).
        (1.056, {"L2": 32, "s": 64}, ("L1",)),
        (1.152, {"s": 96}, ("L2", "L1")),
        (1.248, {"s": 96}, ("L2", "L1")),
        (1.344, {"s": 44, "L2": 32}, ("L1",)),
        (1.42, {"L2": 96}, ("L1",)),
    ]
    # Without space sharing the short starts one step later and its first
    # token comes one step later.
    first = next(r for r in plain.rows if "s" in r.run)
    assert (round(first.t, 3), first.run) == (1.152, {"s": 96})
    assert shared.first_token["s"] < plain.first_token["s"]


def test_first_token_yield_long_prefill_sits_out_the_short_prompts_last_chunk(synthetic_path):
    d = run_space_sharing(synthetic_path, True, first_token_yield=True)
    window = [(round(r.t, 3), r.run, r.paused) for r in d.rows if 0.9 < r.t < 1.5]
    assert window == [
        (0.96, {"L1": 96}, ("L2",)),
        # The short's 300 tokens do not fit one 0.1 s batch (96 do): no first
        # token this step, so L2 keeps its space-sharing share.
        (1.056, {"L2": 32, "s": 64}, ("L1",)),
        (1.152, {"s": 96}, ("L2", "L1")),
        (1.248, {"s": 96}, ("L2", "L1")),
        # The last 44 tokens end the short prompt: L2 (ahead of its deadline)
        # sits out, and the step takes 0.044 s instead of 0.076 s.
        (1.344, {"s": 44}, ("L2", "L1")),
        (1.388, {"L2": 96}, ("L1",)),
        (1.484, {"L2": 96}, ("L1",)),
    ]
    shared = run_space_sharing(synthetic_path, True)
    assert d.first_token["s"] == pytest.approx(1.388)
    assert shared.first_token["s"] == pytest.approx(1.42)
    assert d.sched.metrics.snap.first_token_yields == 1
    assert shared.sched.metrics.snap.first_token_yields == 0


def test_kv_exhaustion_urgent_request_frees_the_least_urgent_prefill(synthetic_path):
    # 31 free blocks of 16 tokens (496 tokens). A (480 tokens, 30 blocks)
    # holds 24 blocks after 4 chunks; u (160 tokens, 10 blocks, due in
    # 0.2 s) arrives at 0.35 and is more urgent (rho 0.25 against A's 0.5).
    s = scheduler(synthetic_path, num_blocks=32)
    free0 = s.kv_cache_manager.block_pool.get_num_free_blocks()
    d = Driver(s, MS_PER_TOKEN.predict, [make_request("A", 480, 0.0),
                                         make_request("u", 160, 0.35, ttft_deadline_s=0.2)])
    d.run()
    assert [(round(r.t, 3), r.run, r.paused, r.recomputed) for r in d.rows] == [
        (0.0, {"A": 96}, (), ()), (0.096, {"A": 96}, (), ()),
        (0.192, {"A": 96}, (), ()), (0.288, {"A": 96}, (), ()),
        # 7 blocks free < 10: A is freed (recomputed later), u admitted.
        (0.384, {"u": 96}, (), ("A",)),
        # A is now late (rho < 0) and more urgent than u, but a request that
        # was freed waits for blocks instead of evicting its evictor (no
        # ping-pong: the first version of the planner thrashed here).
        (0.48, {"u": 64}, (), ()),
        (0.544, {"A": 96}, (), ()), (0.64, {"A": 96}, (), ()), (0.736, {"A": 96}, (), ()),
        (0.832, {"A": 96}, (), ()), (0.928, {"A": 96}, (), ()),
        (1.024, {}, (), ()),
    ]
    assert d.first_token == pytest.approx({"u": 0.544, "A": 1.024})
    assert s.kv_cache_manager.block_pool.get_num_free_blocks() == free0


def test_kv_exhaustion_no_eviction_that_cannot_admit(synthetic_path):
    # 63 free blocks. C (relaxed) holds 6 blocks, A (urgent) 36 after six
    # chunks; u (480 tokens = 30 blocks) arrives at 0.5, between them in
    # urgency: 21 free + C's 6 < 30, so freeing C would not admit u.
    s = scheduler(synthetic_path, num_blocks=64)
    d = Driver(s, MS_PER_TOKEN.predict, [
        make_request("C", 400, 0.0, ttft_deadline_s=1000.0),
        make_request("A", 800, 0.05, ttft_deadline_s=1.0),
        make_request("u", 480, 0.5, ttft_deadline_s=3.0)])
    d.run()
    assert all(not r.recomputed for r in d.rows), "a request was freed for nothing"
    table = compress(d.rows)
    assert table[:3] == [(1, {"C": 96}, (), ()), (8, {"A": 96}, ("C",), ()),
                         (1, {"A": 32, "C": 64}, (), ())]
    # u waits for A's blocks (A finishes at 0.96), then runs before C.
    assert table[3] == (5, {"u": 96}, ("C",), ())
    assert d.first_token == pytest.approx({"A": 0.96, "u": 1.44, "C": 1.68})


def test_solo_budget_after_the_quiet_period(synthetic_path):
    # Solo budget 0.4 s (384 tokens), its quiet period 2 x 0.4 = 0.8 s.
    s = scheduler(synthetic_path, medha={"solo_batch_time_s": 0.4})
    assert s.settings.solo_quiet_s == pytest.approx(0.8)
    d = Driver(s, MS_PER_TOKEN.predict, [make_request("L", 6000, 0.0),
                                         make_request("s", 50, 1.0)])
    d.run()
    rows = [(round(r.t, 3), r.run) for r in d.rows if r.t < 2.7]
    assert rows == [
        # Alone from the start: solo chunks at once.
        (0.0, {"L": 384}), (0.384, {"L": 384}), (0.768, {"L": 384}),
        # The short request arrived at 1.0 (during a solo step): the target
        # budget; it waits for LARS (L is not long for space sharing here).
        (1.152, {"L": 96}), (1.248, {"L": 96}), (1.344, {"L": 96}),
        (1.44, {"L": 32, "s": 50}),  # its prefill and only token
        # L alone again, but the engine had company at 1.44: the target
        # budget until 1.44 + 0.8 = 2.24, then solo.
        *[(round(1.522 + 0.096 * k, 3), {"L": 96}) for k in range(8)],
        (2.29, {"L": 384}), (2.674, {"L": 384}),
    ]
    assert s.last_company == pytest.approx(1.44)


def test_spp_two_batches_in_flight_and_drain_split(synthetic_path):
    tenth_ms = LinearBatchPredictor([0.0, 1e-4, 0.0, 0.0, 0.0, 0.0])  # 992 tokens per 0.1 s
    s = scheduler(synthetic_path, tenth_ms, medha={"long_request_threshold": 4096}, pp=2,
                  token_budget=2048)
    d = Driver(s, tenth_ms.predict, [make_request("L", 8000, 0.0, max_tokens=2),
                                     make_request("s", 300, 0.2, max_tokens=2)], stages=2)
    d.run()
    assert [(round(r.t, 3), r.run) for r in d.rows] == [
        # Two chunks of the same prompt in flight at once (SPP): the second
        # is dispatched before the first has left the last stage.
        (0.0, {"L": 992}), (0.0, {"L": 992}),
        # Then one dispatch per stage time (0.05 s).
        (0.099, {"L": 992}), (0.149, {"L": 992}), (0.198, {"L": 992}),
        # The short arrived at 0.2. Its whole prompt fits: L (ahead of its
        # deadline) sits out this batch (first-token yield).
        (0.248, {"s": 300}),
        (0.298, {"L": 992}),
        (0.313, {"s": 1, "L": 992}),
        # Drain split: the last 1,056 tokens go as 528, 264, 256, 8, so the
        # pipeline drains after a small chunk.
        (0.397, {"L": 528}), (0.447, {"L": 264}), (0.473, {"L": 256}), (0.486, {"L": 8}),
        # L's last chunk is in flight: nothing is dispatched (has_requests()
        # is False) until it returns and L can decode.
        (0.499, {"L": 1}),
        (0.499, {}),
    ]
    # (0.3366 with space sharing alone: L's 480-token share shared the batch.)
    assert d.first_token["s"] == pytest.approx(0.3126)


def test_disconnect_mid_prefill_returns_every_block(synthetic_path):
    from vllm.v1.request import RequestStatus

    s = scheduler(synthetic_path, num_blocks=64)
    pool = s.kv_cache_manager.block_pool
    free0 = pool.get_num_free_blocks()
    d = Driver(s, MS_PER_TOKEN.predict, [make_request("L", 800, 0.0), make_request("s", 100, 0.0)])
    for _ in range(6):
        d.step()
    assert [r.run for r in d.rows] == [{"L": 96}] * 3
    assert pool.get_num_free_blocks() == free0 - 18  # 288 tokens of L
    # The API server aborts the request when its client disconnects.
    aborted = s.finish_requests("L", RequestStatus.FINISHED_ABORTED)
    assert [r.request_id for r in aborted] == ["L"]
    assert pool.get_num_free_blocks() == free0
    assert "L" not in s.slo.states and "L" not in s.requests
    d.run()
    assert [r.run for r in d.rows[3:]] == [{"s": 100}, {}]
    assert pool.get_num_free_blocks() == free0


def greedy_client_run(model, greedy_deadline, medha=None):
    """`first` (2,000 tokens, no declared deadline, so 1.5 x 2 s = 3 s) at
    t=0; `second` (the same size) at t=0.5, declaring `greedy_deadline`."""
    s = scheduler(model, medha=medha)
    d = Driver(s, MS_PER_TOKEN.predict, [
        make_request("first", 2000, 0.0),
        make_request("second", 2000, 0.5, ttft_deadline_s=greedy_deadline)])
    d.run()
    return d


@pytest.mark.parametrize("declared", [1e-3, 0.5, 2.9])
def test_tiny_client_deadline_buys_nothing_by_default(synthetic_path, declared):
    # Default floor (min_request_deadline_s unset): a declared TTFT deadline
    # below the request's own length-aware one (3 s) is raised to it, so the
    # step table is exactly that of a request that declared nothing.
    default = {"min_request_deadline_s": None}
    greedy = greedy_client_run(synthetic_path, declared, default)
    honest = greedy_client_run(synthetic_path, None, default)
    assert compress(greedy.rows) == compress(honest.rows)
    assert greedy.first_token == honest.first_token
    assert greedy.sched.metrics.snap.floored_deadlines == 1
    assert honest.sched.metrics.snap.floored_deadlines == 0


def test_trusted_client_deadline_jumps_and_relaxed_one_yields(synthetic_path):
    honest = greedy_client_run(synthetic_path, None, {"min_request_deadline_s": None})
    # An operator floor of 0 trusts the client: `second` runs alone from its
    # arrival, `first` paused until it is done.
    trusted = greedy_client_run(synthetic_path, 1e-3, {"min_request_deadline_s": 0.0})
    assert trusted.first_token["second"] < trusted.first_token["first"]
    assert honest.first_token["first"] < honest.first_token["second"]
    assert trusted.sched.metrics.snap.floored_deadlines == 0
    # A relaxed deadline (a batch job) is honoured under the default floor:
    # `second` yields to `first` until `first` is done.
    relaxed = greedy_client_run(synthetic_path, 1000.0, {"min_request_deadline_s": None})
    assert all("second" not in r.run for r in relaxed.rows
               if r.t < relaxed.first_token["first"] - 1e-9)
    # Client SLOs off: the tiny deadline is ignored altogether.
    off = greedy_client_run(synthetic_path, 1e-3, {"min_request_deadline_s": 0.0,
                                                   "client_slos": False})
    assert compress(off.rows) == compress(honest.rows)


def starvation_run(model, guard):
    """`L` (1,000 tokens: W = 1 s, deadline 1.5 s) at t=0.05 under 100-token
    requests every 0.09 s for 9 s: 111 % of what the host can do."""
    s = scheduler(model, medha={"starvation_guard": guard, "min_request_deadline_s": None})
    reqs = [make_request("L", 1000, 0.05)] + [make_request(f"s{i}", 100, 0.09 * i)
                                              for i in range(100)]
    d = Driver(s, MS_PER_TOKEN.predict, reqs)
    d.run()
    short_ttft = sorted(d.first_token[f"s{i}"] - 0.09 * i for i in range(100))
    return (d.first_token["L"] - 0.05) / 1.5, short_ttft


def test_starvation_guard_bounds_a_prompt_under_overload(synthetic_path):
    # Plain LARS (guard off): late short requests keep a more negative rho
    # than L (little work to divide by), so L waits for the whole stream.
    lars, lars_short = starvation_run(synthetic_path, 0.0)
    assert lars > 7.0
    # The default guard (2): from arrival + 2 x 1.5 s on, L goes before
    # every request that is not starving; it is done within 3 deadlines
    # (the guard's 2, plus its own prefill, W = 1 s = 0.67 deadline, and the
    # shorts that started starving before it).
    guarded, guarded_short = starvation_run(synthetic_path, 2.0)
    assert 2.0 < guarded <= 3.0
    # What it costs the short requests: about 0.65 s at the median here.
    assert guarded_short[50] - lars_short[50] == pytest.approx(0.648, abs=0.01)
    assert max(guarded_short) < 2.2
