"""Batches in flight through the pipeline stages (SPP bookkeeping).

With `-pp N` vLLM's engine keeps up to N batches in flight
(`step_with_batch_queue`) and returns their outputs in dispatch order. The
ledger records, per dispatched batch, when schedule() finished, its shape (for
the predictor) and whether it was "clean": no earlier batch was in flight, so
the time until its output came back is the batch's own time through the
pipeline, usable to correct the predictor.

With async scheduling (one stage, two batches in flight) the device runs the
batches one after another, so a batch dispatched while another was in flight
started when that one came back: its own time is the interval between the two
returns, and every batch is measurable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from medha_vllm.policy.predictor import BatchShape


@dataclass(frozen=True)
class DispatchedBatch:
    # perf-clock time at the end of schedule() (s).
    dispatched_at: float
    # What the batch carried (prefill chunks with their context, decodes).
    shape: BatchShape
    # No earlier batch was in flight when it was dispatched.
    clean: bool


class BatchLedger:
    def __init__(self, stages: int) -> None:
        self.stages = max(1, stages)
        self._pending: deque[DispatchedBatch] = deque()
        self._last_return: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def in_flight(self) -> bool:
        """A non-empty batch was dispatched and its output has not come back."""
        return any(b.shape.num_tokens for b in self._pending)

    def dispatched(self, shape: BatchShape, at: float, clean: bool) -> None:
        self._pending.append(DispatchedBatch(at, shape, clean))

    def returned(self, now: float) -> tuple[DispatchedBatch, float | None] | None:
        """The oldest batch in flight, whose output came back at `now`, and its
        own time (None when it overlapped others' in a way that hides it)."""
        if not self._pending:
            return None
        batch = self._pending.popleft()
        prev, self._last_return = self._last_return, now
        if batch.clean:
            return batch, now - batch.dispatched_at
        if self.stages == 1 and prev is not None:
            # One stage: it ran after the batch before it came back.
            return batch, now - max(batch.dispatched_at, prev)
        return batch, None

    def stalled(self, num_waiting: int, has_finished: bool, running_all_dispatched: bool) -> bool:
        """Nothing can be dispatched until a batch in flight returns.

        NOTE(medha): with pipeline stages, vLLM's engine calls schedule()
        whenever its batch queue has room; when every request is waiting for
        a batch in flight (e.g. one decode), that yields an empty batch, which
        still makes a round trip through every worker before the real next
        batch can go. Reporting "nothing to schedule" then makes the engine
        wait for the batch in flight instead (it keeps stepping while its
        batch queue is non-empty, and new arrivals flip this back)."""
        if self.stages <= 1 or not self.in_flight():
            return False
        if len(self._pending) > self.stages:
            return False  # bookkeeping out of step with the engine: never stall on it
        return not num_waiting and not has_finished and running_all_dispatched
