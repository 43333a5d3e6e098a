"""Property: under random arrivals and lengths every request finishes, and no
request's first token comes later than a bound derived from its deadline and
the load: arrival + TTFT deadline + all prefill work that arrived before
that deadline + one iteration. (The request's relative slack keeps falling
while it waits, so past its deadline it outranks every request with slack
left; only work already in the system can stay ahead of it.)"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medha_vllm.policy.predictor import BatchShape, LinearBatchPredictor, PrefillTimeTable
from medha_vllm.policy.simulate import SimRequest, simulate_engine

FAKE = LinearBatchPredictor([0.005, 5e-5, 0.01, 0.0, 0.02, 0.0])
TARGET = 0.05

req_strategy = st.tuples(
    st.floats(min_value=0.0, max_value=20.0),            # arrival (s)
    st.one_of(st.integers(16, 2000), st.integers(16_000, 60_000)),  # prompt tokens
    st.integers(1, 20),                                   # output tokens
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(req_strategy, min_size=1, max_size=25), st.booleans())
def test_every_request_finishes_within_bound(specs, space_sharing):
    reqs = [SimRequest(f"r{i}", a, p, o) for i, (a, p, o) in enumerate(specs)]
    res = simulate_engine(reqs, FAKE, TARGET, long_threshold=16_384, space_sharing=space_sharing)
    table = PrefillTimeTable(FAKE, TARGET, 32, 2048, 1 << 17)
    assert all(r.finished is not None for r in reqs), "a request never finished"
    # The longest possible iteration: every request decoding at full context
    # plus a maximal chunk at the longest context.
    all_decodes = BatchShape(decode_contexts=tuple([62_000] * len(reqs)))
    max_step = FAKE.predict_chunk(all_decodes, FAKE.predict(all_decodes), 2048, 60_000)
    for r in reqs:
        deadline = max(1.5 * table(r.prompt_len), 0.5)
        horizon = r.arrival + deadline
        load = sum(table(o.prompt_len) for o in reqs if o.arrival <= horizon)
        # Decode iterations of everything also take time: bound them too.
        decode_time = sum(o.output_len for o in reqs) * max_step
        assert r.first_token <= horizon + load + decode_time + max_step, r
