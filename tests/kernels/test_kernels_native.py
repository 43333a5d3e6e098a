"""Native CPU shard attention (kernels/csrc/shard_attn.cpp) against the float32 reference and vLLM's CPU_ATTN."""

from __future__ import annotations

import pytest
import torch

from medha_vllm.kernels import ShardMetadata, cpu_attn_kv_views, shard_attention_reference
from medha_vllm.kernels import native
from medha_vllm.kernels.testing import assert_states_close, make_sharded_problem

pytestmark = pytest.mark.cpu

if not native.available():
    pytest.skip(f"native kernel not built: {native.unavailable_reason()}", allow_module_level=True)

# (out atol, out rtol, lse atol): float32 arithmetic, own exp polynomial (~1e-7
# relative), one rounding of the output for bfloat16.
TOL = {torch.float32: (2e-5, 1e-5, 2e-5), torch.bfloat16: (2e-2, 2e-2, 5e-3)}
BATCHES = {
    "decode": ([1, 1], [300, 0]),
    "mixed": ([40, 1, 0, 7], [100, 50, 9, 0]),
    "chunk": ([200, 3], [1000, 77]),  # row tiles and several KV ranges per unit
    # First query two keys before a block's end (block_size 32): that block
    # must still be masked for it (the kernel skips masking only for blocks
    # wholly at or before every row's position).
    "block-edge": ([40, 2], [30, 62]),
}


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("group", [1, 2, 4, 8])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_native_matches_reference(batch, causal, group, dtype):
    p = make_sharded_problem(*BATCHES[batch], 3, 2 * group, 2, 128 if group == 4 else 64, dtype,
                             block_size=32, causal=causal, layout="CPU_ATTN", seed=group)  # fmt: skip
    for j, m in enumerate([p.full, *p.shards]):
        want = shard_attention_reference(p.query, p.key_cache, p.value_cache, m)
        got = native.shard_attention_native(p.query, p.key_cache, p.value_cache, m)
        assert got[0].dtype == dtype and got[1].dtype == torch.float32
        assert_states_close(got, want, *TOL[dtype], what=f"shard {j - 1} kv_lens={m.kv_lens.tolist()}")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_count_does_not_change_the_math(threads):
    p = make_sharded_problem([64, 1], [3000, 500], 1, 8, 2, 64, block_size=128, layout="CPU_ATTN", seed=3)
    want = shard_attention_reference(p.query, p.key_cache, p.value_cache, p.full)
    got = native.shard_attention_native(p.query, p.key_cache, p.value_cache, p.full, num_threads=threads)
    assert_states_close(got, want, *TOL[torch.float32], what=f"{threads} threads")


# (q_lens, seq_lens, num_q_heads, num_kv_heads): a decode, a first chunk and
# a chunk after a cached prefix; prefill chunks of 1-2048 tokens at up to 16K
# context mixed with decodes; GQA 1, 4, 8.
VLLM_CASES = {
    "mixed-gqa2": ([1, 37, 256], [900, 37, 2300], 4, 2),
    "long-gqa4": ([2048, 1, 32, 1], [16384, 16000, 9000, 3], 8, 2),
    "gqa1": ([128, 1], [5000, 700], 2, 2),
    "gqa8": ([64, 1, 512], [4096, 12000, 512], 8, 1),
}


def vllm_written_cache(ops, seq_lens, hkv, d, bs, dtype, gen):
    """A CPU_ATTN cache (ISA vec) written by vLLM's own writer, each sequence
    in scattered blocks: (kv, k cache, v cache, block table)."""
    nb = sum(-(-s // bs) for s in seq_lens) + 2
    kv = torch.zeros(nb, hkv, bs, 2 * d, dtype=dtype)
    kc, vc = kv.view(nb, hkv, 2 * bs, d).chunk(2, dim=2)
    perm = torch.randperm(nb - 1, generator=gen).to(torch.int32) + 1  # scattered blocks
    table = torch.zeros(len(seq_lens), max(-(-s // bs) for s in seq_lens), dtype=torch.int32)
    cur = 0
    for i, s in enumerate(seq_lens):
        n = -(-s // bs)
        table[i, :n] = perm[cur : cur + n]
        cur += n
        slots = table[i].long()[torch.arange(s) // bs] * bs + torch.arange(s) % bs
        k = torch.randn(s, hkv, d, generator=gen).to(dtype)
        v = torch.randn(s, hkv, d, generator=gen).to(dtype)
        ops.cpu_attn_reshape_and_cache(k, v, kc, vc, slots, "vec")
    return kv, kc, vc, table


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("case", list(VLLM_CASES))
def test_against_vllm_cpu_attn(case, dtype):
    """Same cache written by vLLM's own writer, scattered blocks; the metadata
    the backend's builder makes (step_shard); output equal to vLLM's CPU_ATTN
    kernel on the same step."""
    ops = pytest.importorskip("vllm._custom_ops", reason="vLLM (CPU build) not installed")
    if not hasattr(torch.ops._C, "cpu_attention_with_kv_cache"):
        pytest.skip("vLLM build has no CPU attention ops")
    from medha_vllm.attention.backend import step_shard

    gen = torch.Generator().manual_seed(1)
    q_lens, seq_lens, hq, hkv = VLLM_CASES[case]
    d, bs = 64, 128
    kv, kc, vc, table = vllm_written_cache(ops, seq_lens, hkv, d, bs, dtype, gen)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    q = torch.randn(sum(q_lens), hq, d, generator=gen).to(dtype)
    out = torch.empty_like(q)
    md = ops.cpu_attn_get_scheduler_metadata(len(q_lens), hq, hkv, d, sl, dtype, qsl, True, -1, "vec", True)
    ops.cpu_attention_with_kv_cache(q, kc, vc, out, qsl, sl, d**-0.5, True, None, -1, table, 0.0, md, None)
    meta = step_shard(qsl, sl, table, True)
    pos = torch.cat([torch.arange(s - n, s) for s, n in zip(seq_lens, q_lens)])
    assert torch.equal(meta.query_positions, pos)
    key_cache, value_cache = cpu_attn_kv_views(kv, "vec")
    got, _ = native.shard_attention_native(q, key_cache, value_cache, meta)
    atol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), out.float(), atol=atol, rtol=atol)


def test_refuses_what_it_cannot_serve():
    p = make_sharded_problem([3], [40], 1, 4, 2, 64, block_size=16, layout="NHD", seed=0)
    assert "layout" in native.supports(p.query, p.key_cache, p.value_cache)
    with pytest.raises(ValueError, match="cannot serve"):
        native.shard_attention_native(p.query, p.key_cache, p.value_cache, p.full)
    p = make_sharded_problem([3], [40], 1, 4, 2, 64, torch.float16, block_size=32, layout="CPU_ATTN", seed=0)
    assert "dtype" in native.supports(p.query, p.key_cache, p.value_cache)


def test_build_is_cached_per_host():
    path = native.build()
    assert path.exists() and native.host_isa() in path.name
    assert native.build() == path  # second call is a no-op


@pytest.mark.parametrize("groups", [2, 5])
def test_kvp_group_shards_merge_to_the_whole_kv(groups):
    """KV-cache parallelism's path in the backend: each group attends over
    its token range of the step (step_shard with group/shard_tokens: the
    block-table columns from g x S on, KV lengths clipped to the shard,
    causal by absolute position), and the exact LSE merge of the groups'
    states in group order equals attention over the whole KV. A mixed batch
    (a prefill chunk in a late group, decodes, a sequence shorter than one
    shard), cache written by vLLM's writer, scattered blocks; groups no
    sequence reaches give empty states."""
    ops = pytest.importorskip("vllm._custom_ops", reason="vLLM (CPU build) not installed")
    from medha_vllm.attention.backend import step_shard
    from medha_vllm.kernels.merge import merge_attn_states_torch

    gen = torch.Generator().manual_seed(3)
    seq_lens, q_lens, hq, hkv, d, bs = [700, 300, 1030], [40, 1, 1], 8, 2, 64, 128
    kv, _, _, table = vllm_written_cache(ops, seq_lens, hkv, d, bs, torch.float32, gen)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    q = torch.randn(sum(q_lens), hq, d, generator=gen)
    key_cache, value_cache = cpu_attn_kv_views(kv, "vec")
    whole, whole_lse = native.shard_attention_native(q, key_cache, value_cache,
                                                     step_shard(qsl, sl, table, True))
    shard = 1030 // (groups - 1) // bs * bs if groups > 2 else 640  # cover 1,030 tokens
    states = [native.shard_attention_native(
        q, key_cache, value_cache,
        step_shard(qsl, sl, table, True, group=g, shard_tokens=shard, block_size=bs))
        for g in range(groups)]
    assert groups * shard >= max(seq_lens)
    out, lse = merge_attn_states_torch([o for o, _ in states], [l for _, l in states])
    torch.testing.assert_close(out, whole, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(lse, whole_lse, atol=2e-6, rtol=2e-6)
    # The 300-token sequence (query row 40) has nothing past its first shard.
    assert all(torch.isinf(l[:, 40]).all() for _, l in states[1:]) if shard >= 300 else True
