"""The KVP identity: attention over the whole KV == merge of attention over its shards.

For 1..8 shards of uneven length (empty shards included), causal and
non-causal, GQA ratios 1/4/8, decodes, prefill chunks and mixed batches,
random block tables. Shards run on the fast CPU path and are merged with the
fast merge; the whole-KV side is the float32 reference.
"""

from __future__ import annotations

import pytest
import torch

from medha_vllm.kernels import merge_attn_states, shard_attention, shard_attention_reference
from medha_vllm.kernels.testing import assert_states_close, make_sharded_problem

pytestmark = pytest.mark.cpu

# Tolerances of a result computed from `dtype` inputs against the float32
# reference on the same (already rounded) inputs:
# (out atol, out rtol, lse atol). Outputs are O(1); fp16 keeps 11 mantissa
# bits (~5e-4 relative), bf16 8 bits (~4e-3), and partial outputs are rounded
# once per shard before the merge, hence a few ulps of slack.
TOL = {
    torch.float32: (2e-5, 1e-5, 2e-5),
    torch.float16: (4e-3, 4e-3, 1e-3),
    torch.bfloat16: (3e-2, 2e-2, 5e-3),
}

BATCHES = {
    # name: (q_lens, ctx_lens) -- ctx tokens precede the query tokens of a seq
    "decode": ([1, 1, 1], [250, 3, 97]),
    "chunk": ([48, 17], [160, 0]),
    "mixed": ([1, 33, 0, 8], [200, 77, 40, 5]),
}


def _check(num_shards, causal, group, batch, dtype, head_size, seed, block_size=16):
    q_lens, ctx_lens = BATCHES[batch]
    p = make_sharded_problem(
        q_lens, ctx_lens, num_shards, num_q_heads=2 * group, num_kv_heads=2, head_size=head_size,
        dtype=dtype, block_size=block_size, causal=causal, seed=seed,
    )  # fmt: skip
    want = shard_attention_reference(p.query, p.key_cache, p.value_cache, p.full)
    states = [shard_attention(p.query, p.key_cache, p.value_cache, m) for m in p.shards]
    got = merge_attn_states([o for o, _ in states], [s for _, s in states])
    assert got[0].dtype == dtype
    assert_states_close(got, want, *TOL[dtype], what=f"{num_shards} shards {batch} bounds={p.bounds}")


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("num_shards", range(1, 9))
def test_full_equals_merged_shards_fp32(num_shards, causal, group, batch):
    # Head size alternates 64/128 and the block size 16/32 over the grid, so
    # both are covered without doubling the number of cases.
    head_size = 64 if (num_shards + group) % 2 else 128
    block_size = 16 if num_shards % 2 else 32
    _check(num_shards, causal, group, batch, torch.float32, head_size, seed=num_shards * 31 + group, block_size=block_size)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_size", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("num_shards", [1, 3, 8])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_full_equals_merged_shards_half(causal, num_shards, group, head_size, dtype):
    _check(num_shards, causal, group, "mixed", dtype, head_size, seed=7 + num_shards)


@pytest.mark.parametrize("seed", range(4))
def test_every_shard_causal_gives_same_result(seed):
    """Marking non-owner shards causal too is harmless: their KV precedes the queries."""
    p = make_sharded_problem([5, 1], [90, 60], 4, 8, 2, 64, causal=True, seed=seed)
    loose = [shard_attention(p.query, p.key_cache, p.value_cache, m) for m in p.shards]
    strict = []
    for m in p.shards:
        m_causal = type(m)(**{**m.__dict__, "causal": True})
        strict.append(shard_attention(p.query, p.key_cache, p.value_cache, m_causal))
    for a, b in zip(loose, strict):
        assert_states_close(a, b, 0, 0, 0, what="causal flag on a non-owner shard")
