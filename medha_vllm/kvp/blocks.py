"""Per-group KV blocks of sharded requests (pure bookkeeping).

Each of G groups has its own pool of N blocks; global block ids
[g * N, (g + 1) * N) belong to group g and local id 0 of every group is its
null block, never handed out (as vLLM reserves global id 0,
v1/core/block_pool.py). A request grows one sequence of tokens; the blocks of
token range [g * S, (g + 1) * S) come from group g (shards.ShardLayout).
Growth is all-or-nothing: when any group lacks blocks, nothing is taken and
the short group is named, so the scheduler's existing KV-pressure rules
(recompute the least urgent prefill) apply. Freeing a finished or aborted
request returns every block of every group.
"""

from __future__ import annotations

from dataclasses import dataclass

from medha_vllm.kvp.shards import ShardLayout


@dataclass(frozen=True)
class Shortage:
    """Growth refused: `group` has `free` blocks and needed `needed`."""

    group: int
    needed: int
    free: int


class GroupBlockPools:
    def __init__(self, layout: ShardLayout, blocks_per_group: int) -> None:
        if blocks_per_group < 2:
            raise ValueError(f"each KV group needs at least 2 blocks (one is the null block), "
                             f"got {blocks_per_group}")
        self.layout = layout
        self.n = blocks_per_group
        # LIFO free lists of global ids, local id 0 (the null block) excluded.
        self._free = [list(range((g + 1) * self.n - 1, g * self.n, -1))
                      for g in range(layout.groups)]
        # req_id -> (tokens covered, per-group lists of global block ids).
        self._tokens: dict[str, int] = {}
        self._blocks: dict[str, list[list[int]]] = {}

    def group_of(self, block_id: int) -> int:
        return block_id // self.n

    def local_id(self, block_id: int) -> int:
        """The id a group's worker uses in its own cache (0: the null block)."""
        return block_id % self.n

    def free_blocks(self, group: int) -> int:
        return len(self._free[group])

    def tokens_of(self, req_id: str) -> int:
        return self._tokens.get(req_id, 0)

    def blocks_of(self, req_id: str) -> list[list[int]]:
        """Per-group global block ids of a request, token order within each."""
        return [list(b) for b in self._blocks.get(req_id, [[] for _ in self._free])]

    def shortage(self, req_id: str, tokens: int) -> Shortage | None:
        """Why growing `req_id` to `tokens` tokens would fail (None: it fits)."""
        return self._shortage(req_id, self.layout.blocks_per_group(tokens))

    def _shortage(self, req_id: str, need: list[int]) -> Shortage | None:
        have = [len(b) for b in self._blocks.get(req_id, [[] for _ in self._free])]
        for g, n in enumerate(need):
            extra = n - have[g]
            if extra > len(self._free[g]):
                return Shortage(g, extra, len(self._free[g]))
        return None

    def grow(self, req_id: str, tokens: int) -> Shortage | None:
        """Cover `req_id`'s first `tokens` tokens with blocks; all or nothing.
        Returns None on success, else the first group that is short."""
        self.layout.check_fits(tokens)
        if tokens <= self._tokens.get(req_id, 0):
            return None
        need = self.layout.blocks_per_group(tokens)
        short = self._shortage(req_id, need)
        if short is not None:
            return short
        blocks = self._blocks.setdefault(req_id, [[] for _ in self._free])
        for g, n in enumerate(need):
            while len(blocks[g]) < n:
                blocks[g].append(self._free[g].pop())
        self._tokens[req_id] = tokens
        return None

    def free(self, req_id: str) -> int:
        """Return every block of `req_id` (finished, aborted or evicted);
        returns how many."""
        blocks = self._blocks.pop(req_id, None)
        self._tokens.pop(req_id, None)
        if blocks is None:
            return 0
        for g, ids in enumerate(blocks):
            self._free[g].extend(reversed(ids))
        return sum(map(len, blocks))

    def check(self) -> None:
        """Raise AssertionError if the books are inconsistent: a block held
        twice, held and free, in the wrong group, the null block handed out,
        a count that does not match the request's tokens, or a lost block."""
        seen: set[int] = set()
        for g, free in enumerate(self._free):
            for b in free:
                assert self.group_of(b) == g and self.local_id(b) != 0, (g, b)
                assert b not in seen, f"block {b} free twice"
                seen.add(b)
        for rid, blocks in self._blocks.items():
            want = self.layout.blocks_per_group(self._tokens[rid])
            assert [len(b) for b in blocks] == want, (rid, want)
            for g, ids in enumerate(blocks):
                for b in ids:
                    assert self.group_of(b) == g, f"{rid}: block {b} in group {g}'s list"
                    assert self.local_id(b) != 0, f"{rid}: null block {b} handed out"
                    assert b not in seen, f"block {b} held twice or held and free"
                    seen.add(b)
        assert len(seen) == self.layout.groups * (self.n - 1), "a block was lost"
