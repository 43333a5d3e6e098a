"""KVP in the scheduler: the per-group block pool and the chunk rule.

`attach` runs once in MedhaScheduler's start-up (engine-core process): it
derives the layout from the pool vLLM built (G x N blocks, executor.py) and
installs the per-group placement (pool.py). `cap_chunk` keeps a prefill
chunk inside one group (a chunk never crosses a group boundary), applied in
the scheduler's per-request chunk seam after the planner's own cap.
"""

from __future__ import annotations

from typing import Any

from vllm.logger import init_logger

from medha_vllm.kvp import pool
from medha_vllm.kvp.plan import KvpPlan, make_plan

logger = init_logger(f"vllm.{__name__}")


def attach(scheduler: Any, groups: int, shard_option: int | None) -> KvpPlan | None:
    if groups == 1:
        return None
    total = scheduler.kv_cache_config.num_blocks
    plan = make_plan(groups, total // groups, scheduler.block_size, shard_option,
                     scheduler.max_model_len)
    pool.install(scheduler.kv_cache_manager, plan.layout, plan.blocks_per_group)
    logger.info("Medha KVP: %s", plan.describe())
    return plan


def cap_chunk(plan: KvpPlan | None, request: Any, num_new_tokens: int) -> int:
    if plan is None:
        return num_new_tokens
    return plan.layout.chunk_cap(request.num_computed_tokens, num_new_tokens)


class GroupTracker:
    """The groups each request's KV cache spans, published per finished
    request (`medha:kvp_groups_per_request`)."""

    def __init__(self, plan: KvpPlan, metrics: Any) -> None:
        self.layout = plan.layout
        self.metrics = metrics
        self.groups: dict[str, int] = {}

    def observe(self, output: Any, requests: dict) -> None:
        for rid in output.num_scheduled_tokens:
            r = requests.get(rid)
            if r is not None:
                g = self.layout.groups_for(max(1, r.num_computed_tokens))
                if g > self.groups.get(rid, 0):
                    self.groups[rid] = g

    def finished(self, req_id: str) -> None:
        g = self.groups.pop(req_id, None)
        if g is not None:
            self.metrics.observe_kvp_groups(g)
