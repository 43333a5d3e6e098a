"""Typed description of one KV shard, as seen by the attention kernels.

KVP (Medha, section "KV-cache parallelism") splits one request's KV cache
along the sequence into contiguous token ranges, one per KVP group. Each
group runs attention of the step's query tokens over its own range only and
returns (output, lse); the partial states are merged exactly afterwards.

``ShardMetadata`` is everything a kernel needs to know about one such range
for a batch of sequences (decodes and prefill chunks mixed, variable
lengths). Index tensors follow vLLM's conventions (int32 ``query_start_loc``
and ``block_table``), so the same tensors the model runner builds can be
reused with shard-local block tables and lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ShardMetadata:
    """Attention metadata for one KV shard of a batch of sequences.

    Token ``t`` (0-based, shard-local) of sequence ``i`` lives in physical
    block ``block_table[i, t // block_size]`` at slot ``t % block_size``; its
    absolute position in the sequence is ``shard_start[i] + t``. Query token
    ``j`` may see KV token ``t`` iff ``t < kv_lens[i]`` and, when ``causal``,
    ``shard_start[i] + t <= query_positions[j]``.
    """

    # [num_seqs + 1] int32, cumulative query-token offsets (vLLM style): the
    # query tokens of sequence i are rows query_start_loc[i]:query_start_loc[i+1]
    # of the packed query tensor. A sequence may have 0 query tokens.
    query_start_loc: torch.Tensor
    # [num_seqs, max_blocks_per_seq] int32, physical block ids of this shard's
    # part of each sequence's KV, in shard-local token order. Entries past
    # ceil(kv_lens[i] / block_size) are ignored (may hold any value).
    block_table: torch.Tensor
    # [num_seqs] int32, number of KV tokens of each sequence held by this
    # shard. 0 means the shard is empty for that sequence (lse = -inf).
    kv_lens: torch.Tensor
    # True on the shard that owns the query tokens (the last KVP group, which
    # also holds their own KV): mask KV positions after each query position.
    # False on every other shard: all of its KV precedes the queries.
    causal: bool = False
    # [num_tokens] int32/int64, absolute position of each query token in its
    # sequence. Required when causal, ignored otherwise.
    query_positions: torch.Tensor | None = None
    # [num_seqs] int32/int64, absolute position of shard-local token 0 of each
    # sequence (the token offset of this shard). Required when causal.
    shard_start: torch.Tensor | None = None
    # Host-side upper bounds (python ints) of the query length and KV length
    # per sequence. Optional: GPU launchers use them to size grids without a
    # device->host sync; computed from the tensors when None.
    max_query_len: int | None = None
    max_kv_len: int | None = None

    def __post_init__(self) -> None:
        # NOTE(medha): validate cheap structural facts only (no values, which
        # would force a device sync on GPU); kernels trust the contents.
        if self.query_start_loc.dim() != 1:
            raise ValueError("query_start_loc must be 1-D [num_seqs + 1]")
        num_seqs = self.query_start_loc.numel() - 1
        if self.block_table.dim() != 2 or self.block_table.shape[0] != num_seqs:
            raise ValueError(
                f"block_table must be [num_seqs={num_seqs}, max_blocks], "
                f"got {tuple(self.block_table.shape)}"
            )
        if self.kv_lens.shape != (num_seqs,):
            raise ValueError(f"kv_lens must be [num_seqs={num_seqs}], got {tuple(self.kv_lens.shape)}")
        if self.causal and (self.query_positions is None or self.shard_start is None):
            raise ValueError("causal shards need query_positions and shard_start")
        if self.shard_start is not None and self.shard_start.shape != (num_seqs,):
            raise ValueError("shard_start must be [num_seqs]")

    @property
    def num_seqs(self) -> int:
        return self.query_start_loc.numel() - 1

    def to(self, device: torch.device | str) -> ShardMetadata:
        """Copy of this metadata with every tensor moved to ``device``."""

        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return ShardMetadata(
            query_start_loc=mv(self.query_start_loc),
            block_table=mv(self.block_table),
            kv_lens=mv(self.kv_lens),
            causal=self.causal,
            query_positions=mv(self.query_positions),
            shard_start=mv(self.shard_start),
            max_query_len=self.max_query_len,
            max_kv_len=self.max_kv_len,
        )

    def host_max_query_len(self) -> int:
        if self.max_query_len is not None:
            return self.max_query_len
        q = self.query_start_loc
        return int((q[1:] - q[:-1]).max().item()) if self.num_seqs else 0

    def host_max_kv_len(self) -> int:
        if self.max_kv_len is not None:
            return self.max_kv_len
        return int(self.kv_lens.max().item()) if self.num_seqs else 0


def check_attention_args(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor
) -> tuple[int, int, int, int]:
    """Validate shapes; return (num_q_heads, num_kv_heads, head_size, block_size)."""
    if query.dim() != 3:
        raise ValueError(f"query must be [num_tokens, num_q_heads, head_size], got {tuple(query.shape)}")
    if key_cache.dim() != 4 or key_cache.shape != value_cache.shape:
        raise ValueError(
            "key_cache/value_cache must both be [num_blocks, block_size, num_kv_heads, head_size], "
            f"got {tuple(key_cache.shape)} and {tuple(value_cache.shape)}"
        )
    _, hq, d = query.shape
    _, bs, hkv, dk = key_cache.shape
    if dk != d:
        raise ValueError(f"head_size mismatch: query {d}, cache {dk}")
    if hq % hkv != 0:
        raise ValueError(f"num_q_heads={hq} must be a multiple of num_kv_heads={hkv}")
    if key_cache.dtype != query.dtype or value_cache.dtype != query.dtype:
        raise ValueError("query, key_cache and value_cache must share one dtype")
    return hq, hkv, d, bs
