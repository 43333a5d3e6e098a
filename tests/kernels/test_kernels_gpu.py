"""GPU paths (Triton, FlashInfer) against the float32 reference; skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from medha_vllm.kernels import default_backend, merge_attn_states, shard_attention, shard_attention_reference
from medha_vllm.kernels.testing import assert_states_close, make_sharded_problem

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

# (out atol, out rtol, lse atol) vs the float32 reference on the same rounded inputs.
TOL = {
    torch.float32: (2e-5, 1e-5, 2e-5),
    torch.float16: (4e-3, 4e-3, 1e-3),
    torch.bfloat16: (3e-2, 2e-2, 5e-3),
}


def test_cuda_default_is_triton():
    assert default_backend(torch.device("cuda")) == "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_size", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("num_shards", [1, 2, 5, 8])
def test_triton_full_equals_merged_shards(num_shards, causal, group, head_size, dtype):
    p = make_sharded_problem([1, 77, 0, 1, 300], [500, 130, 9, 0, 1000], num_shards, 2 * group, 2, head_size,
                             dtype, causal=causal, seed=num_shards + group, device="cuda")  # fmt: skip
    want = shard_attention_reference(p.query, p.key_cache, p.value_cache, p.full)
    states = []
    for m in p.shards:
        got = shard_attention(p.query, p.key_cache, p.value_cache, m)
        ref = shard_attention_reference(p.query, p.key_cache, p.value_cache, m)
        assert_states_close(got, ref, *TOL[dtype], what=f"shard kv_lens={m.kv_lens.tolist()}")
        states.append(got)
    merged = merge_attn_states([o for o, _ in states], [s for _, s in states])
    assert_states_close(merged, want, *TOL[dtype], what=f"merged, bounds={p.bounds}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_flashinfer_merge_matches_triton(dtype):
    pytest.importorskip("flashinfer", reason="flashinfer not installed")
    gen = torch.Generator().manual_seed(0)
    lses = torch.randn(4, 8, 33, generator=gen) * 3
    lses[0] = float("-inf")  # one empty shard
    outs = torch.randn(4, 33, 8, 128, generator=gen).to(dtype)
    outs[0] = 0
    outs, lses = outs.cuda(), lses.cuda()
    want = merge_attn_states(outs, lses, backend="triton")
    got = merge_attn_states(outs, lses, backend="flashinfer")
    assert_states_close(got, want, *TOL[dtype][:2], 1e-4)
