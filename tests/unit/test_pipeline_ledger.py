"""BatchLedger: which returned batches give their own time (for the
predictor's correction) with one stage and with several."""

from medha_vllm.pipeline import BatchLedger
from medha_vllm.policy.predictor import BatchShape

SHAPE = BatchShape(((64, 0),), ())


def test_one_stage_overlapping_batches_each_timed_from_the_previous_return():
    led = BatchLedger(1)  # async scheduling: two in flight, one device
    led.dispatched(SHAPE, 0.00, clean=True)
    led.dispatched(SHAPE, 0.01, clean=False)   # while the first runs
    b1, t1 = led.returned(0.10)
    assert b1.clean and t1 == 0.10
    led.dispatched(SHAPE, 0.11, clean=False)
    b2, t2 = led.returned(0.19)                # ran from 0.10 to 0.19
    assert not b2.clean and abs(t2 - 0.09) < 1e-12
    _, t3 = led.returned(0.30)                 # dispatched after 0.19: from 0.19
    assert abs(t3 - 0.11) < 1e-12
    assert led.returned(0.4) is None


def test_one_stage_synchronous_is_dispatch_to_return():
    led = BatchLedger(1)
    led.dispatched(SHAPE, 0.0, clean=True)
    assert led.returned(0.05)[1] == 0.05
    led.dispatched(SHAPE, 0.2, clean=True)     # idle gap before it: not counted
    assert abs(led.returned(0.26)[1] - 0.06) < 1e-12


def test_pipeline_stages_time_only_clean_batches():
    led = BatchLedger(2)  # stages overlap: a later batch's time is hidden
    led.dispatched(SHAPE, 0.0, clean=True)
    led.dispatched(SHAPE, 0.05, clean=False)
    assert led.returned(0.1)[1] == 0.1
    b, t = led.returned(0.15)
    assert t is None and not b.clean
