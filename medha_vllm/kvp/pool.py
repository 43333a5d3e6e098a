"""Per-group KV blocks inside vLLM's own block pool (scheduler side of KVP).

With G KVP groups of N blocks each, the scheduler's one `BlockPool` holds
G x N blocks (the executor reports G times a worker's memory, see
executor.py): global id b belongs to group b // N and is block b % N of that
group's worker (worker.py rewrites the ids). Local id 0 of every group is
held back, as vLLM holds back global id 0 (the null block): a group's worker
points the blocks of other groups at it.

`install` changes one `KVCacheManager` in place, through three narrow seams:

- its pool's free queue becomes a `GroupedFreeQueue`: one vLLM
  `FreeKVCacheBlockQueue` per group; blocks go back to their own group's
  queue; new blocks come from the group the allocation names;
- the full-attention manager's `allocate_new_blocks` allocates block index i
  of a request from group (i x block_size) // S, S the shard size
  (shards.ShardLayout): a request's tokens [g x S, (g + 1) x S) live in
  group g, and a group is onboarded when the request first grows into it;
- `allocate_slots` first checks every group the step grows into and returns
  None (vLLM's "cannot allocate": the scheduler's KV-pressure rules apply)
  when one of them is short, before vLLM's aggregate check.

Freeing is vLLM's: a finished, aborted or preempted request's blocks return
to their groups' queues by id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue

from medha_vllm.kvp.shards import ShardLayout


class GroupedFreeQueue:
    """vLLM's free-block queue, one per KVP group (the interface BlockPool uses)."""

    def __init__(self, free_blocks: list[Any], groups: int, blocks_per_group: int) -> None:
        self.n = blocks_per_group
        self.groups = groups
        by_group: list[list[Any]] = [[] for _ in range(groups)]
        for b in free_blocks:
            g = b.block_id // blocks_per_group
            # Local id 0 of each group is its null block; ids past G x N
            # (the remainder of an uneven split) belong to no group.
            if g < groups and b.block_id % blocks_per_group:
                by_group[g].append(b)
        self.queues = [FreeKVCacheBlockQueue(bs) for bs in by_group]
        # Group the next popleft / popleft_n serves (set by the allocator).
        self.target: int | None = None

    def group_of(self, block_id: int) -> int:
        return block_id // self.n

    @property
    def num_free_blocks(self) -> int:
        return sum(q.num_free_blocks for q in self.queues)

    def free_in(self, group: int) -> int:
        return self.queues[group].num_free_blocks

    def _target(self) -> FreeKVCacheBlockQueue:
        if self.target is None:
            raise RuntimeError(
                "medha KVP: a KV block was requested without naming its group (a vLLM path "
                "the KVP allocator does not cover: prefix-cache copy-on-write, KV connector)")
        return self.queues[self.target]

    def popleft(self) -> Any:
        return self._target().popleft()

    def popleft_n(self, n: int) -> list[Any]:
        return self._target().popleft_n(n)

    def remove(self, block: Any) -> None:
        self.queues[self.group_of(block.block_id)].remove(block)

    def append(self, block: Any) -> None:
        self.queues[self.group_of(block.block_id)].append(block)

    def _split(self, blocks: Iterable[Any]) -> list[list[Any]]:
        out: list[list[Any]] = [[] for _ in self.queues]
        for b in blocks:
            out[self.group_of(b.block_id)].append(b)
        return out

    def append_n(self, blocks: list[Any]) -> None:
        for q, bs in zip(self.queues, self._split(blocks)):
            if bs:
                q.append_n(bs)

    def prepend_n(self, blocks: list[Any]) -> None:
        for q, bs in zip(self.queues, self._split(blocks)):
            if bs:
                q.prepend_n(bs)

    def get_all_free_blocks(self) -> list[Any]:
        return [b for q in self.queues for b in q.get_all_free_blocks()]


def blocks_held_per_group(layout: ShardLayout, num_blocks: int) -> list[int]:
    """Blocks of each group a request holding its first `num_blocks` blocks has."""
    return layout.blocks_per_group(num_blocks * layout.block_size)


def shortage(layout: ShardLayout, queue: GroupedFreeQueue, held_blocks: int,
             tokens: int) -> tuple[int, int, int] | None:
    """(group, needed, free) of the first group that cannot grow a request
    holding `held_blocks` blocks to `tokens` tokens; None when all can."""
    need = layout.blocks_per_group(min(tokens, layout.max_tokens))
    have = blocks_held_per_group(layout, held_blocks)
    for g in range(layout.groups):
        extra = need[g] - have[g]
        if extra > queue.free_in(g):
            return g, extra, queue.free_in(g)
    return None


def install(kv_cache_manager: Any, layout: ShardLayout, blocks_per_group: int) -> GroupedFreeQueue:
    """Make `kv_cache_manager` (vLLM's KVCacheManager of the scheduler) place
    each request's blocks in the KVP group that owns their tokens."""
    pool = kv_cache_manager.block_pool
    managers = kv_cache_manager.coordinator.single_type_managers
    if len(managers) != 1 or type(managers[0]).__name__ != "FullAttentionManager":
        raise ValueError("KV-cache parallelism needs a model whose layers all use full "
                         f"attention (one KV-cache group); got {[type(m).__name__ for m in managers]}")
    if pool.enable_caching:
        raise ValueError("KV-cache parallelism runs with prefix caching off")
    queue = GroupedFreeQueue(pool.free_block_queue.get_all_free_blocks(), layout.groups,
                             blocks_per_group)
    pool.free_block_queue = queue
    mgr = managers[0]
    block_size = mgr.block_size
    assert block_size == layout.block_size, (block_size, layout.block_size)
    orig_allocate_new_blocks = mgr.allocate_new_blocks

    def allocate_new_blocks(request_id: str, num_tokens: int, num_tokens_main_model: int):
        # Grow to each group boundary in turn, each run from its own group.
        held = len(mgr.req_to_blocks[request_id]) * block_size
        new: list[Any] = []
        while held < num_tokens:
            group = min(layout.owner(held), layout.groups - 1)
            upto = min(num_tokens, (group + 1) * layout.shard_tokens)
            queue.target = group
            try:
                new += orig_allocate_new_blocks(request_id, upto, min(upto, num_tokens_main_model))
            finally:
                queue.target = None
            held = len(mgr.req_to_blocks[request_id]) * block_size
        return new

    mgr.allocate_new_blocks = allocate_new_blocks
    orig_allocate_slots = kv_cache_manager.allocate_slots

    def allocate_slots(request, num_new_tokens: int, num_new_computed_tokens: int = 0,
                       new_computed_blocks=None, num_lookahead_tokens: int = 0,
                       num_external_computed_tokens: int = 0, *args: Any, **kwargs: Any):
        held = len(mgr.req_to_blocks.get(request.request_id, ()))
        computed = request.num_computed_tokens + num_new_computed_tokens + num_external_computed_tokens
        tokens = min(computed + num_new_tokens + num_lookahead_tokens, kv_cache_manager.max_model_len)
        checks = [tokens]
        if kwargs.get("full_sequence_must_fit"):
            checks.append(min(request.num_tokens, kv_cache_manager.max_model_len))
        if any(shortage(layout, queue, held, t) is not None for t in checks):
            return None
        return orig_allocate_slots(request, num_new_tokens, num_new_computed_tokens,
                                   new_computed_blocks, num_lookahead_tokens,
                                   num_external_computed_tokens, *args, **kwargs)

    kv_cache_manager.allocate_slots = allocate_slots
    return queue
