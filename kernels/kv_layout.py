"""Adapters from vLLM KV-cache tensors to the views the shard kernels take.

Every kernel in this package reads ``key_cache`` and ``value_cache`` as
LOGICAL ``[num_blocks, block_size, num_kv_heads, head_size]`` tensors with
arbitrary strides (vLLM's "NHD" block view). Physical layouts map onto that
without copies:

* vLLM 0.32 attention backends allocate ``[num_blocks, num_kv_heads,
  block_size, 2 * head_size]`` (logical; physical order set by
  ``KVCacheLayout``) and FlashAttention reads it as
  ``kv_cache.transpose(1, 2).split(head_size, -1)`` -> ``split_kv_cache``.
* The older stacked layout ``[2, num_blocks, block_size, num_kv_heads,
  head_size]`` -> ``split_stacked_kv_cache``.
* An HND cache ``[num_blocks, num_kv_heads, block_size, head_size]`` (FlashInfer
  "HND") -> ``cache.transpose(1, 2)``.
* vLLM's CPU backend (``CPU_ATTN``, ISA ``vec``/``vec16``) stores, per block and
  KV head, K TRANSPOSED as ``[head_size, block_size]`` followed by V as
  ``[block_size, head_size]`` -> ``cpu_attn_kv_views`` (strided views). The
  ``amx`` ISA packs K for AMX tiles and is not supported here.

NOTE(medha): the fast CPU path is zero-copy only when consecutive blocks
form one uniformly strided token axis (contiguous NHD); other layouts are
gathered block by block, which is correct but slower.
"""

from __future__ import annotations

import torch


def split_kv_cache(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM 0.32 ``[num_blocks, num_kv_heads, block_size, 2*head_size]`` -> (K, V) NHD views."""
    if kv_cache.dim() != 4 or kv_cache.shape[-1] != 2 * head_size:
        raise ValueError(f"expected [num_blocks, num_kv_heads, block_size, 2*{head_size}], got {tuple(kv_cache.shape)}")
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return key_cache, value_cache


def split_stacked_kv_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked ``[2, num_blocks, block_size, num_kv_heads, head_size]`` -> (K, V) views."""
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(f"expected [2, num_blocks, block_size, num_kv_heads, head_size], got {tuple(kv_cache.shape)}")
    return kv_cache[0], kv_cache[1]


def cpu_attn_native_isa(head_size: int) -> str:
    """The CPU_ATTN cache packing the native kernel reads for this head size
    (vLLM's own rule for non-AMX hosts: vec16 when head_size % 32 != 0)."""
    return "vec" if head_size % 32 == 0 else "vec16"


def cpu_attn_kv_views(kv_cache: torch.Tensor, isa: str = "vec") -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM CPU backend cache -> (K, V) logical NHD views, no copy.

    kv_cache: contiguous ``[num_blocks, num_kv_heads, block_size, 2*head_size]``
    as allocated for ``CPUAttentionBackend`` and filled by
    ``ops.cpu_attn_reshape_and_cache(..., isa)``. Returns two strided
    ``[num_blocks, block_size, num_kv_heads, head_size]`` views.
    """
    if isa not in ("vec", "vec16"):
        raise NotImplementedError(f"CPU attention ISA {isa!r} packs K differently; only vec/vec16 are supported")
    if kv_cache.dim() != 4 or not kv_cache.is_contiguous():
        raise ValueError("expected a contiguous [num_blocks, num_kv_heads, block_size, 2*head_size] cache")
    nb, hkv, bs, two_d = kv_cache.shape
    d = two_d // 2
    sb, sh = kv_cache.stride(0), kv_cache.stride(1)
    off = kv_cache.storage_offset()
    # K[b, t, h, i] at b*sb + h*sh + i*bs + t ; V[b, t, h, i] at b*sb + h*sh + bs*d + t*d + i
    key_cache = kv_cache.as_strided((nb, bs, hkv, d), (sb, 1, sh, bs), off)
    value_cache = kv_cache.as_strided((nb, bs, hkv, d), (sb, d, sh, 1), off + bs * d)
    return key_cache, value_cache
