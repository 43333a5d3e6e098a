"""Exact KV-sharded attention kernels for Medha's KV-cache parallelism (KVP).

Installed as ``medha_vllm.kernels``. Public API:

* ``ShardMetadata`` -- one KV shard of a batch (block table, lengths, causality).
* ``shard_attention(query, key_cache, value_cache, meta)`` -> (out, lse):
  attention over one shard of a paged KV cache, with its log-sum-exp.
* ``merge_attn_states(outputs, lses)`` -> (out, lse): exact merge of N states.
* LSE convention: natural log, ``[num_heads, num_tokens]`` float32 (vLLM's);
  converters for FlashInfer's base-2 ``[tokens, heads]`` in ``lse``.

Importing this package does not import Triton, FlashInfer or vLLM; the
backends load on first use.
"""

from .dispatch import ATTENTION_BACKENDS, MERGE_BACKENDS, default_backend, merge_attn_states, shard_attention
from .kv_layout import cpu_attn_kv_views, split_kv_cache, split_stacked_kv_cache
from .lse import (
    base2_to_natural,
    convert_lse,
    lse_from_flashinfer,
    lse_from_torch_sdpa,
    lse_to_flashinfer,
    natural_to_base2,
)
from .metadata import ShardMetadata
from .reference import merge_attn_states_reference, shard_attention_reference

__all__ = [
    "ATTENTION_BACKENDS",
    "MERGE_BACKENDS",
    "ShardMetadata",
    "base2_to_natural",
    "convert_lse",
    "cpu_attn_kv_views",
    "default_backend",
    "lse_from_flashinfer",
    "lse_from_torch_sdpa",
    "lse_to_flashinfer",
    "merge_attn_states",
    "merge_attn_states_reference",
    "natural_to_base2",
    "shard_attention",
    "shard_attention_reference",
    "split_kv_cache",
    "split_stacked_kv_cache",
]
