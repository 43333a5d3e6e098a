"""Fast CPU shard attention against the float32 reference, shard by shard."""

from __future__ import annotations

import math

import pytest
import torch

import medha_vllm.kernels.cpu as cpu_mod
from medha_vllm.kernels import ShardMetadata, shard_attention_reference
from medha_vllm.kernels.cpu import shard_attention_cpu
from medha_vllm.kernels.testing import assert_states_close, make_sharded_problem

pytestmark = pytest.mark.cpu

# (out atol, out rtol, lse atol) against the float32 reference on the same
# rounded inputs; one rounding of the output plus the kernel's own reduction
# order (see test_kernels_shard_merge.py for the reasoning).
TOL = {
    torch.float32: (2e-5, 1e-5, 2e-5),
    torch.float16: (3e-3, 3e-3, 1e-3),
    torch.bfloat16: (2e-2, 2e-2, 5e-3),
}

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _each_shard(p, dtype, **kw):
    for j, m in enumerate([p.full, *p.shards]):
        want = shard_attention_reference(p.query, p.key_cache, p.value_cache, m)
        got = shard_attention_cpu(p.query, p.key_cache, p.value_cache, m, **kw)
        assert got[0].dtype == dtype and got[1].dtype == torch.float32
        assert_states_close(got, want, *TOL[dtype], what=f"shard {j - 1} kv_lens={m.kv_lens.tolist()}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("batch", [([1, 1], [300, 0]), ([40, 1, 0, 7], [100, 50, 9, 0])], ids=["decode", "mixed"])
def test_cpu_matches_reference(batch, causal, group, dtype):
    p = make_sharded_problem(*batch, 5, 2 * group, 2, 128 if group == 4 else 64, dtype, causal=causal, seed=group)
    _each_shard(p, dtype)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "random"])
def test_segments_views_and_gathers(monkeypatch, layout, contiguous):
    """Force many segments: zero-copy runs, gathers split at a tiny workspace cap."""
    monkeypatch.setattr(cpu_mod, "MIN_VIEW_TOKENS", 32)
    p = make_sharded_problem([3, 64], [700, 400], 3, 8, 2, 64, block_size=16, layout=layout,
                             contiguous_blocks=contiguous, seed=3)  # fmt: skip
    _each_shard(p, torch.float32, workspace_bytes=3 * 16 * 2 * 64 * 4)  # 3 blocks per gather


def test_long_contiguous_shard_uses_views():
    p = make_sharded_problem([1, 20], [1500, 1100], 2, 8, 2, 64, block_size=32, contiguous_blocks=True, seed=5)
    _each_shard(p, torch.float32)


def _single_seq_meta(kv_len, positions, shard_start, block_size=16, causal=True):
    n_blocks = -(-kv_len // block_size) or 1
    return ShardMetadata(
        query_start_loc=torch.tensor([0, len(positions)], dtype=torch.int32),
        block_table=torch.randperm(n_blocks).to(torch.int32)[None],
        kv_lens=torch.tensor([kv_len], dtype=torch.int32),
        causal=causal,
        query_positions=torch.tensor(positions, dtype=torch.int32),
        shard_start=torch.tensor([shard_start], dtype=torch.int32),
    )


@pytest.mark.parametrize(
    "kv_len,positions,shard_start",
    [
        (40, [5, 17, 39], 0),  # scattered positions: explicit-mask tail
        (40, [39, 10, 25], 0),  # unsorted positions
        (40, [3, 60], 50),  # first query precedes the shard: row sees nothing
        (40, [1, 2], 50),  # every query precedes the shard
        (40, [100, 101], 50),  # queries after the shard end
        (0, [7], 0),  # empty shard
    ],
)
def test_causal_edge_cases(kv_len, positions, shard_start):
    gen = torch.Generator().manual_seed(0)
    meta = _single_seq_meta(kv_len, positions, shard_start)
    n_blocks = meta.block_table.shape[1]
    q = torch.randn(len(positions), 4, 64, generator=gen)
    k = torch.randn(n_blocks, 16, 2, 64, generator=gen)
    v = torch.randn(n_blocks, 16, 2, 64, generator=gen)
    want = shard_attention_reference(q, k, v, meta)
    got = shard_attention_cpu(q, k, v, meta)
    assert_states_close(got, want, *TOL[torch.float32], what=f"positions={positions}")
    blind = [p < shard_start or kv_len == 0 for p in positions]
    assert [bool(x) for x in torch.isneginf(got[1][0])] == blind


def test_custom_scale_and_empty_batch():
    p = make_sharded_problem([4], [30], 2, 4, 1, 64, seed=9)
    want = shard_attention_reference(p.query, p.key_cache, p.value_cache, p.full, scale=0.3)
    got = shard_attention_cpu(p.query, p.key_cache, p.value_cache, p.full, scale=0.3)
    assert_states_close(got, want, *TOL[torch.float32])
    empty = ShardMetadata(torch.zeros(1, dtype=torch.int32), torch.zeros(0, 1, dtype=torch.int32),
                          torch.zeros(0, dtype=torch.int32))  # fmt: skip
    out, lse = shard_attention_cpu(p.query[:0], p.key_cache, p.value_cache, empty)
    assert out.shape == (0, 4, 64) and lse.shape == (4, 0)


def test_vllm_cpu_backend_layout_adapter():
    """Read a cache written by vLLM's own CPU kernel (ISA vec) through cpu_attn_kv_views."""
    ops = pytest.importorskip("vllm._custom_ops", reason="vLLM (CPU build) not installed")
    from medha_vllm.kernels import cpu_attn_kv_views

    if not hasattr(torch.ops._C, "cpu_attn_reshape_and_cache"):
        pytest.skip("vLLM build has no CPU attention ops")
    gen = torch.Generator().manual_seed(0)
    nb, hkv, bs, d, n_tok = 6, 2, 32, 64, 150
    kv_cache = torch.zeros(nb, hkv, bs, 2 * d)
    kc, vc = kv_cache.view(nb, hkv, 2 * bs, d).chunk(2, dim=2)
    table = torch.tensor([4, 1, 5, 0, 2], dtype=torch.int32)
    slots = (table.long()[torch.arange(n_tok) // bs] * bs + torch.arange(n_tok) % bs)
    k, v = torch.randn(n_tok, hkv, d, generator=gen), torch.randn(n_tok, hkv, d, generator=gen)
    ops.cpu_attn_reshape_and_cache(k, v, kc, vc, slots, "vec")
    key_cache, value_cache = cpu_attn_kv_views(kv_cache, "vec")
    meta = ShardMetadata(torch.tensor([0, 3], dtype=torch.int32), table[None], torch.tensor([n_tok], dtype=torch.int32),
                         causal=True, query_positions=torch.tensor([147, 148, 149]), shard_start=torch.tensor([0]))  # fmt: skip
    q = torch.randn(3, 4, d, generator=gen)
    got = shard_attention_cpu(q, key_cache, value_cache, meta)
    scores = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(2, dim=1)) / math.sqrt(d)
    mask = torch.arange(n_tok)[None, :] > torch.tensor([147, 148, 149])[:, None]
    scores = scores.masked_fill(mask, -math.inf)
    want = (torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.repeat_interleave(2, dim=1)), scores.logsumexp(-1))
    assert_states_close(got, want, *TOL[torch.float32], what="vLLM CPU cache layout")


def test_plan_segments_mixes_views_and_gathers(monkeypatch):
    monkeypatch.setattr(cpu_mod, "MIN_VIEW_TOKENS", 64)  # 4 blocks of 16
    row = torch.tensor([7, 3, 4, 5, 6, 0, 13, 12, 11, 10, 9, 1, 2], dtype=torch.int32)
    segs = cpu_mod._plan_visible(row, 13 * 16 - 3, 16, True, 2)
    # Sorted full blocks: 0 1 | 3..7 | 9..13 -> two views, one gather, then the partial block 2.
    plan = [(s.blocks if isinstance(s.blocks, int) else s.blocks.tolist(), s.num_blocks, s.t0, s.t1) for s in segs]
    assert plan == [(3, 5, 0, 80), (9, 5, 0, 80), ([0, 1], 2, 0, 32), ([2], 1, 0, 13)]
    plan = [s.blocks.tolist() for s in cpu_mod._plan_visible(row, 13 * 16, 16, False, 5)]
    assert plan == [[0, 1, 2, 3, 4], [5, 6, 7, 9, 10], [11, 12, 13]]
    tail = cpu_mod._plan_ordered(row, 21, 70, 16)
    assert (tail.blocks.tolist(), tail.t0, tail.t1) == ([3, 4, 5, 6], 5, 54)
    # The same table through the kernel, with a shard that starts and ends mid-block.
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(14, 16, 2, 64, generator=gen), torch.randn(14, 16, 2, 64, generator=gen)
    q = torch.randn(6, 8, 64, generator=gen)
    meta = ShardMetadata(torch.tensor([0, 2, 6], dtype=torch.int32), torch.stack([row, row.flip(0)]),
                         torch.tensor([13 * 16 - 3, 150], dtype=torch.int32), causal=True,
                         query_positions=torch.tensor([1000, 1001, 160, 170, 171, 173]),
                         shard_start=torch.tensor([800, 20]))  # fmt: skip
    for wsb in (2 * 16 * 2 * 64 * 4, 1 << 20):
        got = shard_attention_cpu(q, k, v, meta, workspace_bytes=wsb)
        assert_states_close(got, shard_attention_reference(q, k, v, meta), *TOL[torch.float32])


@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "random"])
def test_blocked_path_for_small_float32_chunks(monkeypatch, contiguous):
    """32 tokens x 4 heads per KV head = 128 rows: the bmm online-softmax path, over several segments."""
    calls = []
    real = cpu_mod._attend_blocked
    monkeypatch.setattr(cpu_mod, "_attend_blocked", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(cpu_mod, "MIN_VIEW_TOKENS", 64)
    monkeypatch.setattr(cpu_mod, "BLOCKED_TILE", 48)  # tiles that straddle segment ends
    p = make_sharded_problem([32, 1], [900, 40], 2, 8, 2, 64, contiguous_blocks=contiguous, seed=4)
    _each_shard(p, torch.float32, workspace_bytes=5 * 16 * 2 * 64 * 4)
    assert calls


def test_multithreaded_uses_flash_for_small_chunks(monkeypatch):
    """With >1 intra-op threads the same shapes go through torch's flash kernel and still match."""
    monkeypatch.setattr(cpu_mod, "_attend_blocked", lambda *a: pytest.fail("bmm path used with 2 threads"))
    torch.set_num_threads(2)  # restored by the autouse fixture in conftest.py
    p = make_sharded_problem([32, 1], [300, 40], 2, 8, 2, 64, seed=6)
    _each_shard(p, torch.float32)
