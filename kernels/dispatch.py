"""Entry points: pick the implementation by device (and an optional override).

=========  ==========================  ==================================
backend    shard_attention             merge_attn_states
=========  ==========================  ==================================
reference  reference.py (float32)      reference.py (float32)
cpu        cpu.py (torch CPU flash)    merge.py (vectorised torch)
torch      --                          merge.py (any device)
triton     triton_attention.py         triton_merge.py
flashinfer --                          flashinfer_ops.py (CUDA, opt-in)
=========  ==========================  ==================================

Default: CPU tensors -> ``cpu``; CUDA tensors -> ``triton``. The debug
environment variable ``MEDHA_KERNEL_BACKEND`` (read at call time) overrides
the default, e.g. ``reference`` to bisect a numerical problem.

NOTE(medha): FlashInfer's merge is opt-in, not the CUDA default, because the
Triton merge is the one whose logic CI checks (under TRITON_INTERPRET=1) on
machines without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .metadata import ShardMetadata

ATTENTION_BACKENDS = ("reference", "cpu", "triton")
MERGE_BACKENDS = ("reference", "cpu", "torch", "triton", "flashinfer")
ENV_BACKEND = "MEDHA_KERNEL_BACKEND"


def default_backend(device: torch.device) -> str:
    """The backend used for tensors on ``device`` when none is requested."""
    forced = os.environ.get(ENV_BACKEND)
    if forced:
        return forced
    return "triton" if device.type == "cuda" else "cpu"


def shard_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: ShardMetadata,
    scale: float | None = None,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of packed query tokens over one paged KV shard, with its LSE.

    query: [num_tokens, num_q_heads, head_size], fp32/bf16/fp16.
    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size]
        (vLLM's NHD block view, any strides; see kv_layout.py), query dtype.
    meta: ShardMetadata (tensors on the query's device); causal only on the
        shard that owns the query tokens.
    scale: softmax scale (default head_size ** -0.5).

    Returns (out [num_tokens, num_q_heads, head_size] query dtype -- float32
    for the reference --, lse [num_q_heads, num_tokens] float32 NATURAL log,
    vLLM layout). Tokens that see no key: out = 0, lse = -inf.
    """
    name = backend or default_backend(query.device)
    if name == "cpu":
        from .cpu import shard_attention_cpu

        return shard_attention_cpu(query, key_cache, value_cache, meta, scale)
    if name == "triton":
        from .triton_attention import shard_attention_triton

        return shard_attention_triton(query, key_cache, value_cache, meta, scale)
    if name == "reference":
        from .reference import shard_attention_reference

        return shard_attention_reference(query, key_cache, value_cache, meta, scale)
    raise ValueError(f"unknown attention backend {name!r}; accepted: {ATTENTION_BACKENDS}")


def merge_attn_states(
    outputs: Sequence[torch.Tensor] | torch.Tensor,
    lses: Sequence[torch.Tensor] | torch.Tensor,
    *,
    out_dtype: torch.dtype | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact online-softmax merge of N >= 1 partial attention states.

    outputs: N x [num_tokens, num_heads, head_size] (or stacked [N, ...]).
    lses: N x [num_heads, num_tokens] float32 NATURAL log (vLLM layout; use
        lse.lse_from_flashinfer for FlashInfer's base-2 [tokens, heads]), or
        stacked [N, num_heads, num_tokens]. -inf marks an empty shard.

    Returns (out [num_tokens, num_heads, head_size] out_dtype (default: the
    outputs' dtype; float32 for the reference), lse [num_heads, num_tokens]
    float32 natural log), lse = log(sum_j exp(lse_j)) and out = sum_j
    exp(lse_j - lse) * out_j; all-empty rows give out = 0, lse = -inf.
    """
    first = outputs if isinstance(outputs, torch.Tensor) else outputs[0]
    name = backend or default_backend(first.device)
    if name in ("cpu", "torch"):
        from .merge import merge_attn_states_torch

        return merge_attn_states_torch(outputs, lses, out_dtype)
    if name == "triton":
        from .triton_merge import merge_attn_states_triton

        return merge_attn_states_triton(outputs, lses, out_dtype)
    if name == "flashinfer":
        from .flashinfer_ops import merge_attn_states_flashinfer

        return merge_attn_states_flashinfer(outputs, lses, out_dtype)
    if name == "reference":
        from .reference import merge_attn_states_reference

        return merge_attn_states_reference(outputs, lses)
    raise ValueError(f"unknown merge backend {name!r}; accepted: {MERGE_BACKENDS}")
