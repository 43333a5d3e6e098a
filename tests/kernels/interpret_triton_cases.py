"""Triton kernels vs the float32 reference, on CPU tensors under TRITON_INTERPRET=1.

Not collected by the default run (no ``test_`` prefix): test_kernels_triton.py
runs this file in a subprocess with TRITON_INTERPRET=1 set before Triton is
imported, so the interpreter never leaks into other tests. The interpreter
executes every program in numpy, so shapes are small.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run through test_kernels_triton.py (needs TRITON_INTERPRET=1)", allow_module_level=True)

from medha_vllm.kernels import merge_attn_states, merge_attn_states_reference, shard_attention_reference  # noqa: E402
from medha_vllm.kernels.testing import assert_states_close, make_sharded_problem  # noqa: E402
from medha_vllm.kernels.triton_attention import shard_attention_triton  # noqa: E402
from medha_vllm.kernels.triton_merge import merge_attn_states_triton  # noqa: E402

# (out atol, out rtol, lse atol) vs the float32 reference on the same rounded
# inputs. fp16/bf16 round P to the input dtype before the P@V dot (as on GPU).
TOL = {
    torch.float32: (2e-5, 1e-5, 2e-5),
    torch.float16: (4e-3, 4e-3, 1e-3),
    torch.bfloat16: (3e-2, 2e-2, 5e-3),
}


@pytest.mark.parametrize(
    "dtype,group,head_size,causal,batch",
    [
        (torch.float32, 1, 64, True, ([1, 19, 0], [40, 30, 5])),
        (torch.float32, 4, 128, True, ([1, 1], [70, 3])),
        (torch.float32, 8, 64, False, ([6, 1], [20, 33])),
        (torch.float32, 3, 80, True, ([5], [21])),  # non power-of-2 group and head size
        (torch.float16, 4, 64, True, ([9, 1], [30, 12])),
        (torch.bfloat16, 8, 128, False, ([1, 4], [25, 0])),
    ],
)
def test_triton_attention_matches_reference_per_shard(dtype, group, head_size, causal, batch):
    p = make_sharded_problem(*batch, 3, 2 * group, 2, head_size, dtype, causal=causal, seed=group)
    for m in [p.full, *p.shards]:
        want = shard_attention_reference(p.query, p.key_cache, p.value_cache, m)
        got = shard_attention_triton(p.query, p.key_cache, p.value_cache, m)
        assert got[0].dtype == dtype
        assert_states_close(got, want, *TOL[dtype], what=f"kv_lens={m.kv_lens.tolist()}")


@pytest.mark.parametrize("num_shards", [1, 2, 4])
def test_triton_full_equals_merged_shards(num_shards):
    p = make_sharded_problem([1, 12], [45, 20], num_shards, 8, 2, 64, causal=True, layout="HND", seed=num_shards)
    want = shard_attention_reference(p.query, p.key_cache, p.value_cache, p.full)
    states = [shard_attention_triton(p.query, p.key_cache, p.value_cache, m) for m in p.shards]
    got = merge_attn_states_triton([o for o, _ in states], [s for _, s in states])
    assert_states_close(got, want, *TOL[torch.float32], what=f"bounds={p.bounds}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1, 3, 8])
def test_triton_merge_matches_reference(n, dtype):
    gen = torch.Generator().manual_seed(n)
    lses = torch.randn(n, 3, 4, generator=gen) * 3
    lses[torch.rand(n, 3, 4, generator=gen) < 0.3] = float("-inf")
    lses[:, 1, 2] = float("-inf")  # an all-empty row
    outs = torch.randn(n, 4, 3, 96, generator=gen).to(dtype)
    want = merge_attn_states_reference(outs, lses)
    got = merge_attn_states_triton(outs, lses)
    torch_got = merge_attn_states(outs, lses, backend="torch")
    tol = {torch.float32: (1e-6, 1e-6), torch.float16: (2e-3, 1e-3), torch.bfloat16: (1.6e-2, 8e-3)}[dtype]
    assert_states_close(got, want, *tol, 1e-6, what=f"N={n}")
    assert_states_close(got, torch_got, *tol, 1e-6, what="triton vs torch merge")


@pytest.mark.parametrize("num_kv_splits", [2, 5])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_triton_split_kv_matches_reference(causal, num_kv_splits):
    """Split-KV (flash-decoding) partials merged in-launcher equal the one-pass result."""
    p = make_sharded_problem([1, 14, 0], [150, 40, 3], 2, 8, 2, 64, causal=causal, seed=11)
    for m in [p.full, *p.shards]:
        want = shard_attention_reference(p.query, p.key_cache, p.value_cache, m)
        got = shard_attention_triton(p.query, p.key_cache, p.value_cache, m, num_kv_splits=num_kv_splits)
        assert_states_close(got, want, *TOL[torch.float32], what=f"splits={num_kv_splits} kv_lens={m.kv_lens.tolist()}")
