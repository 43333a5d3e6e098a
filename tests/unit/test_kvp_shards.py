"""KVP's pure parts: shard layout, per-group block pools (property tests: no
leak, no block in the wrong group, every block back after finish or abort)
and the rank grid against vLLM's own layout rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medha_vllm.kvp.blocks import GroupBlockPools
from medha_vllm.kvp.ranks import coords_of, kvp_groups, pp_groups, rank_of, tp_groups
from medha_vllm.kvp.shards import Role, ShardError, ShardLayout


def test_layout_rejects_unaligned_or_empty_shards_naming_the_setting():
    with pytest.raises(ShardError, match="kvp_max_tokens_per_group = 500 .* block size 32"):
        ShardLayout(2, 500, 32)
    with pytest.raises(ShardError, match="kv_parallel_size must be >= 1"):
        ShardLayout(0, 512, 32)
    with pytest.raises(ShardError, match="needs 3 KV groups .* kv_parallel_size is 2"):
        ShardLayout(2, 512, 32).check_fits(1025)


def test_ranges_roles_and_chunk_caps_of_a_prompt_crossing_a_boundary():
    lay = ShardLayout(3, 512, 32)
    assert lay.ranges(1200) == [(0, 0, 512), (1, 512, 1024), (2, 1024, 1200)]
    assert lay.blocks_per_group(1200) == [16, 16, 6]
    assert lay.blocks_per_group(100) == [4, 0, 0]  # a short request stays in group 0
    # A 300-token chunk at 400 stops at the boundary (512), the next starts there.
    assert lay.chunk_cap(400, 300) == 112
    assert lay.chunk_cap(512, 300) == 300
    assert lay.chunk_cap(1000, 4) == 4
    assert [lay.attention_role(g, 600) for g in range(3)] == [Role.FULL, Role.CAUSAL, Role.NONE]
    assert [lay.attention_role(g, 1199) for g in range(3)] == [Role.FULL, Role.FULL, Role.CAUSAL]


@given(groups=st.integers(1, 4), shard_blocks=st.integers(1, 8), bs=st.sampled_from([1, 16, 32]),
       computed=st.integers(0, 10_000), chunk=st.integers(1, 5_000))
def test_a_capped_chunk_never_crosses_a_boundary(groups, shard_blocks, bs, computed, chunk):
    lay = ShardLayout(groups, shard_blocks * bs, bs)
    c = lay.chunk_cap(computed, chunk)
    assert 1 <= c <= chunk
    assert lay.owner(computed) == lay.owner(computed + c - 1)
    # ... and it is the largest such chunk.
    assert c == chunk or lay.owner(computed + c) == lay.owner(computed) + 1


# A random life of requests on the pools: grow (prefill chunks, decodes),
# finish, abort. After every operation the books balance (check()).
OPS = st.lists(st.tuples(st.sampled_from(["grow", "grow", "grow", "finish", "abort"]),
                         st.integers(0, 5), st.integers(1, 700)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(groups=st.integers(1, 3), shard_blocks=st.integers(1, 6), pool=st.integers(2, 30),
       ops=OPS)
def test_blocks_never_leak_nor_land_in_the_wrong_group(groups, shard_blocks, pool, ops):
    lay = ShardLayout(groups, shard_blocks * 16, 16)
    pools = GroupBlockPools(lay, pool)
    for op, r, n in ops:
        rid = f"r{r}"
        if op == "grow":
            target = min(pools.tokens_of(rid) + n, lay.max_tokens)
            before = pools.blocks_of(rid)
            short = pools.grow(rid, target)
            if short is None:
                assert pools.tokens_of(rid) == target
                after = pools.blocks_of(rid)
                # Growth only appends; earlier blocks stay where they were.
                assert all(a[:len(b)] == b for a, b in zip(after, before))
            else:  # all or nothing, and the short group is named truthfully
                assert pools.blocks_of(rid) == before
                assert short.free == pools.free_blocks(short.group) < short.needed
        else:
            held = sum(map(len, pools.blocks_of(rid)))
            assert pools.free(rid) == held
            assert pools.tokens_of(rid) == 0
        pools.check()
    for r in range(6):
        pools.free(f"r{r}")
    assert [pools.free_blocks(g) for g in range(groups)] == [pool - 1] * groups
    pools.check()


def test_global_and_local_ids_and_the_null_block():
    pools = GroupBlockPools(ShardLayout(2, 64, 16), 10)
    assert pools.grow("a", 100) is None  # 4 blocks in group 0, 3 in group 1
    g0, g1 = pools.blocks_of("a")
    assert len(g0) == 4 and all(0 < b < 10 for b in g0)
    assert len(g1) == 3 and all(10 < b < 20 for b in g1)
    assert {pools.group_of(b) for b in g1} == {1}
    assert 0 not in {pools.local_id(b) for b in g0 + g1}
    short = pools.grow("b", 64 * 2)  # group 0 has 5 free, needs 4; group 1 has 6, needs 4
    assert short is None
    short = pools.grow("c", 64 * 2)
    assert short is not None and short.group == 0 and short.free == 1 and short.needed == 4


def test_check_catches_a_block_in_the_wrong_group():
    # The property test above relies on check(); show it fails on bad books.
    pools = GroupBlockPools(ShardLayout(2, 32, 16), 6)
    pools.grow("a", 64)
    pools._blocks["a"][0][0], pools._blocks["a"][1][0] = (pools._blocks["a"][1][0],
                                                          pools._blocks["a"][0][0])
    with pytest.raises(AssertionError, match="in group"):
        pools.check()
    pools = GroupBlockPools(ShardLayout(2, 32, 16), 6)
    pools.grow("a", 64)
    pools._blocks["a"][0].pop()  # a block neither held nor free: lost
    with pytest.raises(AssertionError):
        pools.check()


def _vllm_groups(tp: int, pp: int, kvp: int):
    """vLLM 0.32's own grouping (distributed/parallel_state.py,
    initialize_model_parallel), with KVP absorbed by the leading -1 factor."""
    import torch

    all_ranks = torch.arange(tp * pp * kvp).reshape(-1, 1, pp, 1, tp)  # (-1, DP, PP, PCP, TP)
    tp_g = [g.tolist() for g in all_ranks.view(-1, tp).unbind(0)]
    pp_g = [g.tolist() for g in all_ranks.transpose(2, 4).reshape(-1, pp).unbind(0)]
    return tp_g, pp_g


@pytest.mark.parametrize("tp,pp,kvp", [(1, 1, 2), (1, 2, 2), (2, 2, 2), (2, 1, 3), (1, 4, 2)])
def test_rank_grid_matches_vllms_tp_and_pp_groups(tp, pp, kvp):
    vtp, vpp = _vllm_groups(tp, pp, kvp)
    assert sorted(tp_groups(tp, pp, kvp)) == sorted(vtp)
    assert sorted(pp_groups(tp, pp, kvp)) == sorted(vpp)
    world = tp * pp * kvp
    groups = kvp_groups(tp, pp, kvp)
    assert sorted(r for g in groups for r in g) == list(range(world))
    for g in groups:  # one KVP group: same (pp, tp) in every replica, KVP order
        coords = [coords_of(r, pp, tp) for r in g]
        assert [c[0] for c in coords] == list(range(kvp))
        assert len({c[1:] for c in coords}) == 1
    for r in range(world):
        assert rank_of(*coords_of(r, pp, tp), pp, tp) == r
