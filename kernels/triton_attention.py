"""Triton shard attention over a paged KV cache (GPU path; also runs under TRITON_INTERPRET=1).

One program handles ``BLOCK_Q`` query tokens of one sequence for one KV
head, i.e. ``BLOCK_Q * GROUP_PAD`` rows (all query heads of the GQA group
stacked), so every K/V tile loaded from the paged cache serves the whole
group: decode is bandwidth-bound and this is what keeps it so. KV tiles of
``BLOCK_N`` tokens are fetched token by token through the block table, which
works for any block size and any cache strides. The softmax runs in base 2
(``exp2``, scale pre-multiplied by log2(e)); the LSE is converted to the
package convention (natural log, ``[num_heads, num_tokens]``) on store.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .metadata import ShardMetadata, check_attention_args
from .triton_merge import merge_attn_states_triton

LOG2E = 1.0 / math.log(2.0)


@triton.jit
def _shard_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    block_table_ptr, qsl_ptr, kv_lens_ptr, qpos_ptr, shard_start_ptr,
    scale_log2,
    num_q_blocks,
    kv_split_len,
    stride_qt, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_os, stride_ot, stride_oh, stride_od,
    stride_ls, stride_lh, stride_lt,
    stride_bt,
    PAGE: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq = pid // num_q_blocks
    q_first = (pid % num_q_blocks) * BLOCK_Q
    q0 = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q0
    if q_first >= q_len:  # NOTE(medha): grid sized by max_query_len; short seqs exit here
        return
    kv_len = tl.load(kv_lens_ptr + seq)

    rows = tl.arange(0, BLOCK_Q * GROUP_PAD)
    tok = q_first + rows // GROUP_PAD
    g = rows % GROUP_PAD
    row_ok = (tok < q_len) & (g < GROUP)
    head = kvh * GROUP + g
    d = tl.arange(0, HEAD_PAD)
    d_ok = d < HEAD
    q = tl.load(
        q_ptr + (q0 + tok)[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :] * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if IEEE_DOT:
        q = q.to(tl.float32)

    kv_end = kv_len
    if CAUSAL:
        start = tl.load(shard_start_ptr + seq).to(tl.int64)
        lim = tl.load(qpos_ptr + q0 + tok, mask=row_ok, other=-1).to(tl.int64) - start
        lim = tl.where(row_ok, lim, -1)
        kv_end = tl.minimum(kv_len, tl.max(lim, 0) + 1).to(tl.int32)

    # NOTE(medha): split-KV (flash-decoding): program `split` covers KV tokens
    # [split * kv_split_len, (split + 1) * kv_split_len) and writes a partial
    # state that the launcher merges; with one split it writes the result.
    kv_lo = split * kv_split_len
    kv_end = tl.minimum(kv_end, kv_lo + kv_split_len)

    m_i = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, HEAD_PAD], tl.float32)
    for n0 in range(kv_lo, kv_end, BLOCK_N):
        t = n0 + tl.arange(0, BLOCK_N)
        t_ok = t < kv_end
        blk = tl.load(block_table_ptr + seq * stride_bt + t // PAGE, mask=t_ok, other=0).to(tl.int64)
        slot = t % PAGE
        k = tl.load(
            k_ptr + blk[None, :] * stride_kb + slot[None, :] * stride_ks + kvh * stride_kh + d[:, None] * stride_kd,
            mask=t_ok[None, :] & d_ok[:, None],
            other=0.0,
        )  # [HEAD_PAD, BLOCK_N]
        if IEEE_DOT:
            s = tl.dot(q, k.to(tl.float32), input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = s * scale_log2
        valid = row_ok[:, None] & t_ok[None, :]
        if CAUSAL:
            valid = valid & (t[None, :].to(tl.int64) <= lim[:, None])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # NOTE(medha): a row with nothing visible yet keeps max -inf; use 0 as
        # the shift so exp2(-inf - 0) = 0 instead of NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_ptr + blk[:, None] * stride_vb + slot[:, None] * stride_vs + kvh * stride_vh + d[None, :] * stride_vd,
            mask=t_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # [BLOCK_N, HEAD_PAD]
        if IEEE_DOT:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    m_fin = tl.where(m_i == float("-inf"), 0.0, m_i)
    lse = tl.where(seen, (m_fin + tl.math.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    out_ptr += split * stride_os
    lse_ptr += split * stride_ls
    tl.store(
        out_ptr + (q0 + tok)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    tl.store(lse_ptr + head * stride_lh + (q0 + tok) * stride_lt, lse, mask=row_ok)


def _fp32_dots(dtype: torch.dtype) -> bool:
    """Whether the kernel upcasts to float32 and uses IEEE dots.

    Always for float32 inputs (TF32 would break exactness). NOTE(medha): also
    for bfloat16 under TRITON_INTERPRET=1, whose tl.dot mis-reads bf16
    operands in Triton 3.9; the upcast keeps the kernel's logic testable on
    CPU and is never taken on a GPU.
    """
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def _default_kv_splits(device: torch.device, programs: int, max_kv_len: int) -> int:
    """Split the KV when too few programs would run to fill the GPU (decode, small chunks)."""
    if device.type != "cuda":
        return 1
    target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    # NOTE(medha): >= 512 KV tokens per split keeps the extra merge pass cheap.
    return max(1, min(triton.cdiv(target, programs), triton.cdiv(max_kv_len, 512)))


def _tile_sizes(group: int, max_query_len: int) -> tuple[int, int, int]:
    """(GROUP_PAD, BLOCK_Q, BLOCK_N); rows per program >= 16 for tl.dot."""
    group_pad = triton.next_power_of_2(group)
    rows = 16 if max_query_len * group_pad <= 16 else 64
    rows = max(rows, group_pad)
    return group_pad, rows // group_pad, 32


def shard_attention_triton(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: ShardMetadata,
    scale: float | None = None,
    num_kv_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``reference.shard_attention_reference`` (same arguments).

    query: [num_tokens, num_q_heads, head_size]; key_cache/value_cache:
    [num_blocks, block_size, num_kv_heads, head_size] (any strides), one
    dtype (fp32/bf16/fp16); meta tensors on the same device. Returns out
    [num_tokens, num_q_heads, head_size] in the query dtype and lse
    [num_q_heads, num_tokens] float32 natural log (-inf, out 0 when nothing
    is visible). Uses meta.max_query_len / max_kv_len when set (no device
    sync). ``num_kv_splits`` forces the split-KV factor (default: enough
    programs to fill the GPU; 1 on CPU/interpreter).
    """
    hq, hkv, d, page = check_attention_args(query, key_cache, value_cache)
    scale = d**-0.5 if scale is None else scale
    num_tokens = query.shape[0]
    out = torch.zeros_like(query)
    lse = torch.full((hq, num_tokens), float("-inf"), dtype=torch.float32, device=query.device)
    max_q = meta.host_max_query_len()
    if num_tokens == 0 or meta.num_seqs == 0 or max_q == 0:
        return out, lse
    group = hq // hkv
    group_pad, block_q, block_n = _tile_sizes(group, max_q)
    num_q_blocks = triton.cdiv(max_q, block_q)
    programs = meta.num_seqs * num_q_blocks * hkv
    max_kv = max(meta.host_max_kv_len(), 1)
    if num_kv_splits is None:
        num_kv_splits = _default_kv_splits(query.device, programs, max_kv)
    split_len = triton.cdiv(triton.cdiv(max_kv, num_kv_splits), block_n) * block_n
    num_kv_splits = triton.cdiv(max_kv, split_len)
    if num_kv_splits > 1:  # partial states in float32, merged below
        part_out = torch.zeros((num_kv_splits, *query.shape), dtype=torch.float32, device=query.device)
        part_lse = torch.full((num_kv_splits, hq, num_tokens), float("-inf"), dtype=torch.float32, device=query.device)
    else:
        part_out, part_lse = out.unsqueeze(0), lse.unsqueeze(0)
    qpos = meta.query_positions if meta.causal else meta.kv_lens  # dummy pointer when unused
    start = meta.shard_start if meta.causal else meta.kv_lens
    grid = (meta.num_seqs * num_q_blocks, hkv, num_kv_splits)
    _shard_attention_kernel[grid](
        query, key_cache, value_cache, part_out, part_lse,
        meta.block_table, meta.query_start_loc, meta.kv_lens, qpos, start,
        scale * LOG2E,
        num_q_blocks,
        split_len,
        *query.stride(), *key_cache.stride(), *value_cache.stride(), *part_out.stride(),
        *part_lse.stride(), meta.block_table.stride(0),
        PAGE=page, GROUP=group, GROUP_PAD=group_pad, HEAD=d,
        HEAD_PAD=max(16, triton.next_power_of_2(d)),
        BLOCK_Q=block_q, BLOCK_N=block_n, CAUSAL=meta.causal,
        IEEE_DOT=_fp32_dots(query.dtype),
    )  # fmt: skip
    if num_kv_splits > 1:
        return merge_attn_states_triton(part_out, part_lse, out_dtype=query.dtype)
    return out, lse
