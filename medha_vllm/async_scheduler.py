"""MedhaAsyncScheduler: Medha's batch formation on vLLM's AsyncScheduler.

With async scheduling (vLLM's default on CUDA) the engine schedules batch N+1
while batch N runs: `AsyncScheduler` gives each request scheduled for a decode
an output placeholder, so it can be scheduled again before its sampled token
is back, and caches blocks as tokens arrive. A custom scheduler that
subclasses the synchronous `Scheduler` runs under the same engine loop but
cannot schedule a decode until its token is back, so decodes go every other
step (vLLM warns about it at start-up).

Medha needs nothing else from the async path: its plan is made from the
request counters, which include the tokens in flight, and the chunk cap and
queue order are the same seams. What changes is timing: two batches are in
flight on one stage, and `pipeline.BatchLedger` measures each batch from the
return of the one before it. `MedhaScheduler.__new__` builds this class when
`scheduler_config.async_scheduling` is on, so `--scheduler medha` needs no
second class name.
"""

from __future__ import annotations

from vllm.v1.core.sched.async_scheduler import AsyncScheduler

from medha_vllm.scheduler import MedhaScheduler


class MedhaAsyncScheduler(MedhaScheduler, AsyncScheduler):
    # MRO: Medha's overrides, then AsyncScheduler's placeholders, then Scheduler.
    async_scheduling = True
