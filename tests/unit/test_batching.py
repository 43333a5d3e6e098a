"""Step-table tests of batch formation with a fake (exact, linear) predictor."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medha_vllm.policy.batching import PrefillCandidate, plan_batch
from medha_vllm.policy.predictor import BatchShape, LinearBatchPredictor, largest_fitting_chunk
from medha_vllm.policy.planner import PlannerSettings
from medha_vllm.policy.simulate import SimRequest, simulate_engine

# 10 ms per step, 0.1 ms per token, 20 ms per million prefill (q,k) pairs,
# 50 ms per million decode pairs, nothing per sequence.
FAKE = LinearBatchPredictor([0.010, 1e-4, 0.020, 0.0, 0.050, 0.0])


def cand(rid, remaining, computed=0, rho=1.0, long=False):
    return PrefillCandidate(rid, remaining, computed, rho, long)


def test_largest_fitting_chunk_grid_and_tail():
    t = lambda n: 0.01 + 1e-4 * n  # noqa: E731
    assert largest_fitting_chunk(t, 0.05, 10_000, 32, 8192) == 384   # 0.01+0.0384 <= 0.05
    assert largest_fitting_chunk(t, 0.05, 100, 32, 8192) == 100      # whole remainder fits
    assert largest_fitting_chunk(t, 0.0105, 10_000, 32, 8192) == 0   # nothing fits


@given(base=st.floats(0, 0.2), per_tok=st.floats(1e-6, 1e-3), quad=st.floats(0, 1e-6),
       limit=st.floats(0, 0.3), remaining=st.integers(0, 5000), min_chunk=st.sampled_from([1, 16, 32]),
       max_chunk=st.integers(32, 4096))
def test_largest_fitting_chunk_is_the_largest_candidate_that_fits(base, per_tok, quad, limit,
                                                                  remaining, min_chunk, max_chunk):
    """Against the definition: the whole remainder when it is a candidate
    (<= max_chunk) and fits, else the largest multiple of min_chunk up to
    min(remaining, max_chunk) that fits, else a remainder below min_chunk
    that fits, else 0 (a non-decreasing cost, as predictions are)."""
    t = lambda n: base + per_tok * n + quad * n * n  # noqa: E731
    hi = min(remaining, max_chunk)
    if remaining > 0 and remaining <= max_chunk and t(remaining) <= limit:
        want = remaining
    else:
        fits = [k * min_chunk for k in range(1, hi // min_chunk + 1) if t(k * min_chunk) <= limit]
        want = max(fits, default=0)
        if want == 0 and 0 < remaining < min_chunk and t(remaining) <= limit:
            want = remaining
    assert largest_fitting_chunk(t, limit, remaining, min_chunk, max_chunk) == want


def test_decodes_first_then_prefills_in_priority_order():
    plan = plan_batch([1000] * 4, [cand("a", 5000), cand("b", 5000)], FAKE, 0.05, 2048, 32, 4096)
    # Decodes: 0.010 + 4e-4 + 0.05*0.004 = 0.0106 s. A chunk of c at context 0
    # adds 1e-4*c + 0.02*c*(c+1)/2/1e6: 352 -> 0.0365 (fits), 384 -> 0.0399
    # (0.0505 > 0.05). 'a' takes 352, 'b' gets nothing.
    assert plan.chunks == {"a": 352}
    assert plan.predicted_time_s <= 0.05


def test_chunks_shrink_as_context_grows():
    sizes = [plan_batch([], [cand("x", 10**6, computed=ctx)], FAKE, 0.1, 8192, 32, 8192).chunks["x"]
             for ctx in (0, 16_000, 64_000, 256_000)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert all(s % 32 == 0 for s in sizes)


def test_space_sharing_caps_long_and_admits_one_long():
    cands = [cand("L1", 100_000, 50_000, rho=0.5, long=True),
             cand("L2", 100_000, 0, rho=0.6, long=True),
             cand("s", 500, 0, rho=2.0)]
    plan = plan_batch([], cands, FAKE, 0.1, 8192, 32, 8192, space_sharing=True, rho_max=0.5)
    assert "L2" not in plan.chunks                      # at most one long prefill
    assert "s" in plan.chunks                          # the short one gets the rest
    long_alone = FAKE.predict(BatchShape(((plan.chunks["L1"], 50_000),))) - FAKE.predict(BatchShape())
    assert long_alone <= 0.1 * (1 - 0.5) + 1e-9         # share = target x (1 - rho)


def test_long_alone_uses_whole_budget():
    plan = plan_batch([], [cand("L", 100_000, 50_000, rho=0.5, long=True)], FAKE, 0.1, 8192, 32, 8192)
    assert FAKE.predict(plan.shape) > 0.1 * 0.75        # no short waiting: no idle budget


def test_empty_batch_makes_progress():
    plan = plan_batch([], [cand("x", 10**6, computed=10**7)], FAKE, 0.001, 8192, 32, 8192)
    assert plan.chunks == {"x": 32}


@pytest.mark.parametrize("space_sharing", [True, False])
def test_step_table_short_arrives_during_long_prefill(space_sharing):
    reqs = [SimRequest("long", 0.0, 40_000, 2), SimRequest("short", 1.0, 300, 5)]
    res = simulate_engine(reqs, FAKE, PlannerSettings(0.1, 0.8, 32, 2048, space_sharing=space_sharing,
                                                      long_request_threshold=16_384))
    # Alone, the long prompt gets the solo budget (fewer, bigger chunks).
    assert res.steps[0].plan.budget_reason == "solo" and res.steps[0].plan.chunks == {"long": 2048}
    after = [s for s in res.steps if s.t >= 1.0]
    if space_sharing:
        # The first iteration after the short arrives already carries all of
        # it: the long prefill yields part of the budget.
        assert after[0].plan.chunks["short"] == 300
    # Every iteration with company stays within the target budget (predicted
    # by the same model); solo iterations within the solo budget.
    for s in res.steps:
        assert s.duration_s <= s.plan.budget_s + 1e-9
    assert {s.plan.budget_reason for s in after[:2]} == {"target"}
    ttft = reqs[1].first_token - 1.0
    # Deadline max(1.5 x ~0.04 s, 0.5 s floor) = 0.5 s: space sharing meets it
    # with room; pure LARS starts the short when little slack is left (within
    # two iterations of the deadline: the one it starts in, on the 32-token
    # grid, and the one in progress when it arrived).
    assert ttft < (0.2 if space_sharing else 0.5 + 2 * 0.1)
    assert all(r.finished is not None for r in reqs)


def test_most_urgent_prefill_progresses_even_over_budget():
    # At 10M tokens of context one 32-token chunk alone overruns the budget;
    # the most urgent prefill still gets it, the next one gets nothing.
    plan = plan_batch([1000] * 4, [cand("x", 10**6, computed=10**7), cand("y", 100)], FAKE,
                      0.05, 8192, 32, 8192)
    assert plan.chunks == {"x": 32}


def test_drain_tail_cap_splits_only_the_end_of_a_pipelined_prompt():
    from medha_vllm.policy.batching import drain_tail_cap

    assert drain_tail_cap(30000, 1, 256) is None  # no pipeline
    assert drain_tail_cap(200, 2, 256) is None  # already small
    # Far from the end the cap is above any real chunk (no effect); near the
    # end the chunks halve down to the minimum tail.
    assert drain_tail_cap(30000, 2, 256) == 15000
    tail, left = [], 1800
    while left > 0:
        c = min(left, drain_tail_cap(left, 2, 256) or left)
        tail.append(c)
        left -= c
    assert tail == [900, 450, 256, 194]
    assert drain_tail_cap(1000, 4, 64) == 250


def _long_chunk_time(plan, ctx):
    return FAKE.predict(BatchShape(((plan.chunks["L"], ctx),))) - FAKE.predict(BatchShape())


def test_first_token_yield_long_sits_out_the_batch_that_ends_a_short():
    cands = [cand("L", 100_000, 50_000, rho=0.4, long=True), cand("s", 300, 0, rho=20.0)]
    plan = plan_batch([1000] * 2, cands, FAKE, 0.1, 8192, 32, 8192, first_token_yield=True)
    # The short's whole prompt runs, with the decodes and nothing of the long prefill.
    assert plan.chunks == {"s": 300} and plan.yielded == "L"
    assert plan.predicted_time_s == pytest.approx(
        FAKE.predict(BatchShape(((300, 0),), (1000, 1000))))
    # Without the yield the same batch carries the long prefill's share too.
    shared = plan_batch([1000] * 2, cands, FAKE, 0.1, 8192, 32, 8192, first_token_yield=False)
    assert shared.chunks["s"] == 300 and shared.chunks["L"] > 0 and shared.yielded is None
    assert shared.predicted_time_s > plan.predicted_time_s + 0.03


@pytest.mark.parametrize("rho", [0.0, -0.3, float("-inf")])
def test_first_token_yield_not_when_the_long_prefill_is_late_or_starving(rho):
    cands = [cand("L", 100_000, 50_000, rho=rho, long=True), cand("s", 300, 0, rho=20.0)]
    plan = plan_batch([], cands, FAKE, 0.1, 8192, 32, 8192, first_token_yield=True)
    assert plan.yielded is None and plan.chunks["L"] > 0
    # Late (rho <= 0): the batch is space sharing's alone (which leaves the
    # long prefill the whole budget, the short one what is left).
    assert plan.chunks == plan_batch([], cands, FAKE, 0.1, 8192, 32, 8192).chunks
    assert plan.chunks["s"] < 300


def test_first_token_yield_not_for_a_chunk_that_does_not_end_the_prompt():
    # A 20,000-token prompt below the long threshold cannot finish in one
    # 0.1 s batch: this batch gives it no first token, so the long prefill
    # keeps its space-sharing share.
    cands = [cand("L", 100_000, 50_000, rho=0.4, long=True), cand("m", 20_000, 0, rho=5.0)]
    plan = plan_batch([], cands, FAKE, 0.1, 8192, 32, 8192, first_token_yield=True)
    assert plan.yielded is None and plan.chunks["L"] > 0 and 0 < plan.chunks["m"] < 20_000
    assert _long_chunk_time(plan, 50_000) <= 0.1 * (1 - 0.4) + 1e-9


def test_first_token_yield_needs_space_sharing():
    cands = [cand("L", 100_000, 50_000, rho=0.4, long=True), cand("s", 300, 0, rho=20.0)]
    plan = plan_batch([], cands, FAKE, 0.1, 8192, 32, 8192, space_sharing=False,
                      first_token_yield=True)
    assert plan.yielded is None and plan.chunks["L"] > 0


def test_first_token_yield_only_to_a_short_of_the_same_or_a_more_urgent_class():
    def batch(short_priority):
        cands = [PrefillCandidate("L", 100_000, 50_000, 0.4, True, user_priority=1),
                 PrefillCandidate("s", 300, 0, 20.0, False, user_priority=short_priority)]
        return plan_batch([], cands, FAKE, 0.1, 8192, 32, 8192, first_token_yield=True)

    assert batch(0).yielded == "L" and batch(1).yielded == "L"
    # A short request of a less urgent class does not make the long one yield.
    less = batch(2)
    assert less.yielded is None and less.chunks["L"] > 0
