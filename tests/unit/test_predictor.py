import random

import pytest

from medha_vllm.policy.predictor import (BatchShape, LinearBatchPredictor, OnlineCorrection,
                                         PrefillTimeTable, ape, median)
from medha_vllm.profiler import ProfilePlan, ProfileRecorder

TRUE = LinearBatchPredictor([0.008, 8e-5, 0.03, 0.9, 0.2, 0.001])


def random_shape(rng):
    chunks = tuple((rng.choice([32, 64, 256, 1024]), rng.randrange(0, 60_000))
                   for _ in range(rng.randint(0, 2)))
    decodes = tuple(rng.randrange(10, 60_000) for _ in range(rng.randint(0, 8)))
    return BatchShape(chunks, decodes or (1,))


def test_fit_recovers_coefficients_from_noisy_samples():
    rng = random.Random(0)
    shapes = [random_shape(rng) for _ in range(200)]
    times = [TRUE.predict(s) * rng.uniform(0.97, 1.03) for s in shapes]
    fitted = LinearBatchPredictor.fit(shapes, times)
    held = [random_shape(rng) for _ in range(50)]
    assert median([ape(fitted.predict(s), TRUE.predict(s)) for s in held]) < 0.03
    assert all(c >= 0 for c in fitted.coef)


def test_incremental_chunk_prediction_matches_full():
    base = BatchShape(((64, 100),), (500, 900))
    full = TRUE.predict(base.with_chunk(256, 4000))
    inc = TRUE.predict_chunk(base, TRUE.predict(base), 256, 4000)
    assert inc == pytest.approx(full)


def test_prefill_table_monotone_and_additive():
    table = PrefillTimeTable(TRUE, 0.1, 32, 2048, 100_000)
    values = [table(n) for n in range(0, 100_000, 997)]
    assert values == sorted(values)
    assert table(100_000) > table(50_000) * 2  # attention makes later tokens dearer


def test_online_correction_converges_and_records_error():
    oc = OnlineCorrection(alpha=0.2)
    for _ in range(60):
        oc.observe(True, 1.0 * oc.factor(True), 2.0)
    assert oc.factor(True) == pytest.approx(2.0, rel=0.02)
    assert oc.factor(False) == 1.0
    assert oc.errors[0] == pytest.approx(0.5)


def test_profile_plan_and_recorder_fit():
    plan = ProfilePlan.build(max_context=8192, token_budget=2048, max_chunk=4096)
    ids = {r.req_id for r in plan.requests}
    assert all(set(step.caps) <= ids for step in plan.steps)
    assert max(r.pretend_computed for r in plan.requests) == 8192
    rec = ProfileRecorder()
    rng = random.Random(1)
    for _ in range(60):
        s = random_shape(rng)
        rec.record(s, TRUE.predict(s) * rng.uniform(0.98, 1.02))
    pred, stats = rec.fit()
    assert stats["heldout_median_ape"] < 0.05 and stats["num_heldout"] >= 10


def test_kvp_predicts_the_slowest_groups_cost():
    """With shards of S tokens every group attends over at most S tokens of a
    sequence, in parallel: a context counts up to S, in predictions, the
    incremental chunk cost and the fit alike."""
    from medha_vllm.policy.predictor import BatchShape, LinearBatchPredictor

    p = LinearBatchPredictor([0.001, 1e-4, 1e-2, 1e-3, 1e-2, 1e-4])
    kvp = LinearBatchPredictor(p.coef, context_cap=4096)
    long = BatchShape(((64, 60_000),), (50_000,))
    at_cap = BatchShape(((64, 4096),), (4096,))
    assert kvp.predict(long) == p.predict(at_cap) < p.predict(long)
    assert kvp.predict(BatchShape(((64, 1000),))) == p.predict(BatchShape(((64, 1000),)))
    base = BatchShape(((32, 100),))
    assert kvp.predict_chunk(base, kvp.predict(base), 64, 60_000) == \
        pytest.approx(kvp.predict(base.with_chunk(64, 60_000)), rel=1e-12)
    shapes = [BatchShape(((c, ctx),)) for c in (32, 256, 1024) for ctx in (0, 2000, 20_000, 80_000)]
    fitted = LinearBatchPredictor.fit(shapes, [kvp.predict(s) for s in shapes], context_cap=4096)
    assert fitted.context_cap == 4096
    assert all(abs(fitted.predict(s) - kvp.predict(s)) < 1e-6 for s in shapes)
    assert LinearBatchPredictor.from_dict(fitted.to_dict()).context_cap == 4096
