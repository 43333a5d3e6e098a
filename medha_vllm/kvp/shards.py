"""Contiguous KV shards of one request (Medha, arXiv 2409.17264 §3.3).

Group g holds the request's tokens [g * S, (g + 1) * S), S the shard size
(block-aligned). A group is onboarded when the prefill first writes past the
previous group's end; only the last group appends, and a chunk never crosses
a boundary (`chunk_cap`). Every group runs the same query tokens: a group
whose shard lies wholly before the queries attends to all of it, the group
that owns the queries attends causally, later groups have nothing
(`attention_role`). The partial results are merged by log-sum-exp in group
order (kernels/lse.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ShardError(ValueError):
    """An impossible shard layout or a request that does not fit it; the
    message names the setting."""


class Role(Enum):
    FULL = "full"      # the whole shard lies before the queries
    CAUSAL = "causal"  # the shard holds the queries: causal within it
    NONE = "none"      # the shard lies after the queries (not onboarded yet)


@dataclass(frozen=True)
class ShardLayout:
    # Worker groups (--medha-kv-parallel-size).
    groups: int
    # Tokens one group holds of one request (--medha-kvp-max-tokens-per-group).
    shard_tokens: int
    # Tokens per KV block.
    block_size: int

    def __post_init__(self) -> None:
        if self.groups < 1:
            raise ShardError(f"kv_parallel_size must be >= 1, got {self.groups}")
        if self.block_size < 1:
            raise ShardError(f"block_size must be >= 1, got {self.block_size}")
        if self.shard_tokens < self.block_size or self.shard_tokens % self.block_size:
            raise ShardError(
                f"kvp_max_tokens_per_group = {self.shard_tokens} must be a positive multiple of "
                f"the KV block size {self.block_size} (shards are block-aligned)")

    @property
    def max_tokens(self) -> int:
        """Longest sequence the groups hold together."""
        return self.groups * self.shard_tokens

    def check_fits(self, tokens: int) -> None:
        if tokens > self.max_tokens:
            raise ShardError(
                f"a sequence of {tokens} tokens needs {self.groups_for(tokens)} KV groups of "
                f"{self.shard_tokens} tokens, but kv_parallel_size is {self.groups} "
                f"(at most {self.max_tokens} tokens)")

    def groups_for(self, tokens: int) -> int:
        """Groups a sequence of `tokens` tokens uses (at least 1)."""
        return max(1, -(-tokens // self.shard_tokens))

    def owner(self, position: int) -> int:
        """Group holding token `position` (0-based)."""
        return position // self.shard_tokens

    def ranges(self, tokens: int) -> list[tuple[int, int, int]]:
        """(group, start, end) of each onboarded group's tokens."""
        S = self.shard_tokens
        return [(g, g * S, min((g + 1) * S, tokens)) for g in range(self.groups_for(tokens))]

    def chunk_cap(self, computed: int, chunk: int) -> int:
        """The largest part of a `chunk` starting at token `computed` that
        stays in one group (chunks end at group boundaries)."""
        boundary = (computed // self.shard_tokens + 1) * self.shard_tokens
        return max(0, min(chunk, boundary - computed))

    def attention_role(self, group: int, query_start: int) -> Role:
        """What `group` does for queries at [query_start, ...) (a chunk that
        respects `chunk_cap`, so all its queries are in one group)."""
        owner = self.owner(query_start)
        if group < owner:
            return Role.FULL
        return Role.CAUSAL if group == owner else Role.NONE

    def blocks_per_group(self, tokens: int) -> list[int]:
        """KV blocks each group needs for a sequence of `tokens` tokens."""
        out = [0] * self.groups
        for g, start, end in self.ranges(tokens):
            out[g] = -(-(end - start) // self.block_size)
        return out
