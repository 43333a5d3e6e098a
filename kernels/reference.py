"""Pure-torch float32 references: the definition the fast paths are tested against.

Written for clarity, not speed: one sequence at a time, KV gathered through
the block table token by token, full score matrix materialised. Every fast
path (CPU, Triton, FlashInfer) takes the same arguments and must agree with
these functions within the per-dtype tolerances of tests/kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .metadata import ShardMetadata, check_attention_args


def gather_shard_kv(
    cache: torch.Tensor, block_table_row: torch.Tensor, kv_len: int
) -> torch.Tensor:
    """Shard-local KV of one sequence in token order.

    cache: [num_blocks, block_size, num_kv_heads, head_size], any strides.
    block_table_row: [max_blocks] integer. Returns [kv_len, num_kv_heads, head_size]
    in the cache dtype (a copy).
    """
    block_size = cache.shape[1]
    t = torch.arange(kv_len, device=cache.device)
    blocks = block_table_row.to(device=cache.device, dtype=torch.long)[t // block_size]
    return cache[blocks, t % block_size]


def shard_attention_reference(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: ShardMetadata,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of packed query tokens over one paged KV shard, in float32.

    query: [num_tokens, num_q_heads, head_size], fp32/bf16/fp16.
    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size],
        same dtype as query, any strides (vLLM NHD block layout; pass
        ``cache.transpose(1, 2)`` for an HND cache).
    meta: the shard (see ``ShardMetadata``). Query head h reads KV head
        ``h // (num_q_heads // num_kv_heads)`` (vLLM's GQA convention).
    scale: softmax scale, default ``head_size ** -0.5``.

    Returns ``(out, lse)``: out [num_tokens, num_q_heads, head_size] FLOAT32
    (the reference keeps full precision); lse [num_q_heads, num_tokens]
    float32, natural log; rows that see no key get out = 0 and lse = -inf.
    """
    hq, hkv, d, _ = check_attention_args(query, key_cache, value_cache)
    group = hq // hkv
    scale = d**-0.5 if scale is None else scale
    num_tokens = query.shape[0]
    out = torch.zeros(num_tokens, hq, d, dtype=torch.float32, device=query.device)
    lse = torch.full((hq, num_tokens), -math.inf, dtype=torch.float32, device=query.device)
    qsl = meta.query_start_loc.tolist()
    kv_lens = meta.kv_lens.tolist()
    for i in range(meta.num_seqs):
        q0, q1, kv_len = qsl[i], qsl[i + 1], kv_lens[i]
        if q1 == q0 or kv_len == 0:
            continue
        q = query[q0:q1].float()
        k = gather_shard_kv(key_cache, meta.block_table[i], kv_len).float()
        v = gather_shard_kv(value_cache, meta.block_table[i], kv_len).float()
        k = k.repeat_interleave(group, dim=1)  # [kv_len, hq, d]
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale  # [hq, L, kv_len]
        if meta.causal:
            kv_pos = int(meta.shard_start[i]) + torch.arange(kv_len, device=query.device)
            q_pos = meta.query_positions[q0:q1].to(query.device, torch.long)
            visible = kv_pos[None, :] <= q_pos[:, None]  # [L, kv_len]
            scores = scores.masked_fill(~visible[None], -math.inf)
        row_lse = torch.logsumexp(scores, dim=-1)  # [hq, L], -inf if row empty
        probs = torch.exp(scores - row_lse[..., None])
        probs = torch.nan_to_num(probs, nan=0.0)  # empty rows: exp(-inf - -inf)
        out[q0:q1] = torch.einsum("hqk,khd->qhd", probs, v)
        lse[:, q0:q1] = row_lse
    return out, lse


def merge_attn_states_reference(
    outputs: Sequence[torch.Tensor] | torch.Tensor,
    lses: Sequence[torch.Tensor] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact online-softmax merge of N partial attention states, in float32.

    outputs: N tensors [num_tokens, num_heads, head_size] (or one stacked
        [N, num_tokens, num_heads, head_size]), any float dtype.
    lses: N tensors [num_heads, num_tokens] float32 natural log (or stacked
        [N, num_heads, num_tokens]); -inf marks an empty state.

    Returns (out [num_tokens, num_heads, head_size] float32,
    lse [num_heads, num_tokens] float32 natural log) with
    lse = log(sum_j exp(lse_j)), out = sum_j exp(lse_j - lse) * out_j;
    all-empty rows give out = 0, lse = -inf.
    """
    outs = [o.float() for o in outputs]
    ls = [x.float() for x in lses]
    if not outs or len(outs) != len(ls):
        raise ValueError("need the same number (>= 1) of outputs and lses")
    lse = torch.logsumexp(torch.stack(ls), dim=0)  # -inf when every lse_j is -inf
    out = torch.zeros_like(outs[0])
    for o, x in zip(outs, ls):
        w = torch.exp(x - lse)  # [H, T]; NaN only where lse == -inf
        w = torch.where(torch.isneginf(lse), torch.zeros_like(w), w)
        out += w.transpose(0, 1)[..., None] * o
    return out, lse
