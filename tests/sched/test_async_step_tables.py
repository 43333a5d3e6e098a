"""Step tables with async scheduling (vLLM's default on CUDA): the engine
schedules batch N+1 while batch N runs (a batch queue of two on one stage).
`--scheduler medha` then builds MedhaAsyncScheduler, Medha on vLLM's real
AsyncScheduler; same harness and predictor as test_step_tables.py."""

from __future__ import annotations

import pytest
from harness import Driver, compress, make_request, make_scheduler
from test_step_tables import BUDGET, MS_PER_TOKEN, run_worked_example, worked_example


def scheduler(model, async_scheduling=True, **medha):
    s = make_scheduler(model, medha={**BUDGET, **medha}, async_scheduling=async_scheduling)
    s.set_predictor(MS_PER_TOKEN)
    return s


def two_requests():
    return [make_request("a", 64, 0.0, max_tokens=6), make_request("b", 200, 0.0, max_tokens=4)]


def test_the_medha_name_builds_the_async_variant_only_with_async_on(synthetic_path):
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler

    from medha_vllm.async_scheduler import MedhaAsyncScheduler
    from medha_vllm.scheduler import MedhaScheduler

    on = scheduler(synthetic_path)
    assert type(on) is MedhaAsyncScheduler and isinstance(on, AsyncScheduler)
    assert on.async_scheduling
    off = scheduler(synthetic_path, async_scheduling=False)
    assert type(off) is MedhaScheduler and not isinstance(off, AsyncScheduler)


def test_decodes_go_in_every_batch(synthetic_path):
    sync = Driver(scheduler(synthetic_path, async_scheduling=False), MS_PER_TOKEN.predict,
                  two_requests())
    sync.run()
    overlapped = Driver(scheduler(synthetic_path), MS_PER_TOKEN.predict, two_requests(),
                        in_flight=2)
    overlapped.run()
    rows = [(round(r.t, 3), r.run) for r in overlapped.rows]
    assert rows == [
        # b's second chunk is dispatched while its first runs.
        (0.0, {"b": 96}), (0.0, {"b": 96}),
        (0.096, {"b": 8, "a": 64}),
        # Both decode while their previous token is still in flight
        # (AsyncScheduler's output placeholders): a decode in every batch.
        (0.192, {"b": 1, "a": 1}), (0.264, {"b": 1, "a": 1}), (0.266, {"b": 1, "a": 1}),
        (0.268, {"a": 1}), (0.27, {"a": 1}),
        (0.271, {}), (0.272, {}),  # vLLM reports the finished requests
    ]
    # The same chunks and decodes as synchronous Medha, in the same order.
    assert [r.run for r in overlapped.rows if r.run] == [r.run for r in sync.rows if r.run]
    assert overlapped.finished == pytest.approx(sync.finished)
    assert overlapped.sched.metrics.snap.overlapped_batches == 7
    assert sync.sched.metrics.snap.overlapped_batches == 0

    # The synchronous class under the same engine loop (what vLLM runs for a
    # custom Scheduler subclass with async scheduling on): a decode cannot be
    # scheduled until its token is back, so every other batch is empty.
    old = scheduler(synthetic_path, async_scheduling=False)
    old.vllm_config.scheduler_config.async_scheduling = True
    stalled = Driver(old, MS_PER_TOKEN.predict, two_requests(), in_flight=2)
    stalled.run()
    decoding = [r.run for r in stalled.rows if r.t >= 0.192]
    assert decoding[:6] == [{}, {"b": 1, "a": 1}, {}, {"b": 1, "a": 1}, {}, {"b": 1, "a": 1}]


def test_worked_example_lars_one_batch_ahead(synthetic_path):
    s = scheduler(synthetic_path, space_sharing=False)
    d = Driver(s, MS_PER_TOKEN.predict, worked_example(), in_flight=2)
    d.run()
    alternate = [(1, {"s1": 96}, ("s2", "long"), ()), (1, {"s2": 96}, ("s1", "long"), ())]
    assert compress(d.rows) == [
        # As in the synchronous table, but each batch is planned while the
        # one before it runs: the batch that starts at t=5.28 was planned at
        # t=5.184, when the shorts' rho (0.63) was still above the long
        # one's (0.6). So one more long chunk, then the same alternation.
        (56, {"long": 96}, (), ()),
        (1, {"s1": 96}, ("long",), ()),
        (1, {"s2": 96}, ("s1", "long"), ()),
        *alternate * 4,
        (1, {"s1": 20, "s2": 20, "long": 32}, (), ()),
        (47, {"long": 96}, (), ()),
        (1, {"long": 80}, (), ()),
        (2, {}, (), ()),
    ]
    assert d.first_token["s1"] == d.first_token["s2"] == pytest.approx(6.408)
    assert d.first_token["long"] == pytest.approx(11.0)
    sync = run_worked_example(synthetic_path)
    assert d.first_token["s1"] - sync.first_token["s1"] == pytest.approx(0.096)  # one chunk
