"""The KVP layout of a running engine, derived the same way in the scheduler
and in every worker (pure Python).

Each of the G groups has N KV blocks (a worker's cache); local block 0 of a
group is its null block, so a group holds (N - 1) x block_size tokens of
requests. The shard size S (tokens of one request one group holds) is
`kvp_max_tokens_per_group`, by default all of a group's cache; the groups
together must hold `--max-model-len` tokens of one request.
"""

from __future__ import annotations

from dataclasses import dataclass

from medha_vllm.kvp.shards import ShardError, ShardLayout


@dataclass(frozen=True)
class KvpPlan:
    layout: ShardLayout
    # KV blocks of one group's worker (its null block included).
    blocks_per_group: int

    @property
    def groups(self) -> int:
        return self.layout.groups

    @property
    def shard_tokens(self) -> int:
        return self.layout.shard_tokens

    def describe(self) -> str:
        S, G = self.layout.shard_tokens, self.layout.groups
        return (f"{G} KV-cache parallel groups of {self.blocks_per_group} blocks x "
                f"{self.layout.block_size} tokens; a request's tokens [g x {S}, (g + 1) x {S}) "
                f"live in group g (at most {G * S} tokens a request)")


def make_plan(groups: int, blocks_per_group: int, block_size: int, shard_option: int | None,
              max_model_len: int) -> KvpPlan:
    """The layout, or ShardError naming the setting that makes it impossible."""
    usable = (blocks_per_group - 1) * block_size
    if usable < block_size:
        raise ShardError(f"kv_parallel_size {groups}: each group's KV cache has "
                         f"{blocks_per_group} blocks, too few to hold a request")
    shard = usable if shard_option is None else shard_option
    if shard_option is not None and shard_option > usable:
        raise ShardError(
            f"kvp_max_tokens_per_group = {shard_option} is more than one worker's KV cache "
            f"holds ({blocks_per_group - 1} blocks x {block_size} tokens = {usable})")
    if shard_option is None:
        shard -= shard % block_size
    layout = ShardLayout(groups, shard, block_size)
    if layout.max_tokens < max_model_len:
        need = -(-max_model_len // shard)
        raise ShardError(
            f"--max-model-len {max_model_len} needs {need} KV-cache parallel groups of "
            f"{shard} tokens (kvp_max_tokens_per_group), but kv_parallel_size is {groups}: "
            f"raise --medha-kv-parallel-size to {need}, or the KV cache per worker, or lower "
            f"--max-model-len to {layout.max_tokens}")
    return KvpPlan(layout, blocks_per_group)
