"""KVP's pure parts: the shard layout and the rank grid against vLLM's own
layout rule. (The per-group block books are tested on vLLM's real block pool:
tests/sched/test_kvp_tables.py.)"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
