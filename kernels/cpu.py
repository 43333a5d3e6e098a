"""Fast CPU shard attention: torch's CPU flash kernel over KV segments, merged exactly.

Strategy (one sequence at a time):

1. Split the shard's KV range into the part every query token sees (all of
   it on non-causal shards; positions before the earliest query on the
   causal shard) and the causal tail.
2. Cut the visible part into *segments*: a run of physically consecutive
   blocks (after sorting the ids: order does not matter without a mask) is
   a zero-copy strided view of the cache; scattered blocks are gathered
   (``index_select``) into a reused workspace, up to ``workspace_bytes``
   per segment.
3. Run ``aten._scaled_dot_product_flash_attention_for_cpu`` (which returns
   the natural-log LSE) on each segment, with the GQA group folded into the
   query length so one pass over a KV head serves all its query heads
   (single-threaded, float32 chunks of 64..191 folded rows use a bmm
   online softmax instead, see BLOCKED_MIN_ROWS).
4. The tail runs with ``is_causal`` when it is the usual square diagonal
   block of a prefill chunk, else with an explicit mask.
5. Merge the segment states exactly (online softmax, as in ``merge.py``).

NOTE(medha): a merge of segments is the same exact combination KVP uses
across shards, so splitting here changes reduction order only, not the math.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .metadata import ShardMetadata, check_attention_args

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

# NOTE(medha): gathered segments are capped in bytes, not tokens, so the
# workspace stays cache- and memory-friendly for any head count; 16 MiB per K
# and per V keeps the number of segments (and merges) small for 32K-token
# shards while avoiding page faults from a fresh large allocation per call.
DEFAULT_WORKSPACE_BYTES = 16 << 20
# Runs of consecutive blocks shorter than this are gathered instead of viewed:
# one kernel call + merge per tiny run would cost more than the copy.
MIN_VIEW_TOKENS = 512

# NOTE(medha): torch's CPU flash kernel tiles queries by 32 rows when it gets
# fewer than 192 (GQA-folded) rows, which runs ~15 % below its large-chunk
# speed; for float32 rows in [BLOCKED_MIN_ROWS, BLOCKED_MAX_ROWS) (e.g. a
# 32-token chunk with 4 query heads per KV head) a bmm-based online softmax
# over BLOCKED_TILE-token KV tiles is faster. Measured on 2 AVX-512 cores,
# one thread: 117 vs 100 GFLOP/s at 128 rows, equal at 192+, slower below 64.
# Used single-threaded only (see use_blocked below).
BLOCKED_MIN_ROWS, BLOCKED_MAX_ROWS, BLOCKED_TILE = 64, 192, 512

_workspace: dict[tuple, torch.Tensor] = {}


def _get_workspace(cache: torch.Tensor, num_blocks: int, slot: int) -> torch.Tensor:
    """A reused [>= num_blocks, block_size, num_kv_heads, head_size] buffer (slot 0: K, 1: V)."""
    # NOTE(medha): kept across calls because freshly mmapped multi-MiB
    # buffers cost more in page faults than the gather itself on small CPUs.
    key = (tuple(cache.shape[1:]), cache.dtype, slot)
    buf = _workspace.get(key)
    if buf is None or buf.shape[0] < num_blocks:
        if len(_workspace) >= 8:
            _workspace.clear()
        buf = _workspace[key] = torch.empty((num_blocks, *cache.shape[1:]), dtype=cache.dtype)
    return buf


def _is_token_viewable(cache: torch.Tensor) -> bool:
    """True when consecutive blocks form one uniformly strided token axis."""
    return cache.stride(-1) == 1 and cache.stride(0) == cache.shape[1] * cache.stride(1)


class Segment(NamedTuple):
    """KV tokens [t0, t1) of a run of blocks, flattened in the order given."""

    blocks: torch.Tensor | int  # ids to gather ([n] int), or first physical block of a view
    num_blocks: int
    t0: int
    t1: int


def _plan_visible(row: torch.Tensor, n_tokens: int, block_size: int, viewable: bool, max_gather: int) -> list[Segment]:
    """Segments covering shard-local tokens [0, n_tokens), seen by every query row.

    NOTE(medha): these tokens need no mask, and attention without a mask is
    invariant to the order of the keys, so the block ids are SORTED before
    looking for runs of consecutive ids: blocks handed out in reverse or
    shuffled order (vLLM's free queue returns freed blocks reversed) still
    form zero-copy views. Runs of >= MIN_VIEW_TOKENS become views; the other
    blocks are gathered max_gather at a time; a partial last block is its own
    segment.
    """
    n_full, rem = divmod(n_tokens, block_size)
    segments: list[Segment] = []
    ids = row[:n_full].to(torch.long).sort().values
    if viewable and n_full:
        breaks = ((ids[1:] - ids[:-1]) != 1).nonzero().flatten() + 1
        starts = torch.cat([breaks.new_zeros(1), breaks])
        lengths = torch.cat([breaks, breaks.new_full((1,), n_full)]) - starts
        long = lengths * block_size >= MIN_VIEW_TOKENS
        for first, n in torch.stack([ids[starts[long]], lengths[long]], dim=1).tolist():
            segments.append(Segment(first, n, 0, n * block_size))
        ids = ids[~torch.repeat_interleave(long, lengths)]
    for g in range(0, ids.numel(), max_gather):
        chunk = ids[g : g + max_gather]
        segments.append(Segment(chunk, chunk.numel(), 0, chunk.numel() * block_size))
    if rem:
        segments.append(Segment(row[n_full : n_full + 1], 1, 0, rem))
    return segments


def _plan_ordered(row: torch.Tensor, lo: int, hi: int, block_size: int) -> Segment:
    """One gathered segment of shard-local tokens [lo, hi), in token order (for masked tails)."""
    b0, b1 = lo // block_size, -(-hi // block_size)
    return Segment(row[b0:b1], b1 - b0, lo - b0 * block_size, hi - b0 * block_size)


def _segment_kv(cache: torch.Tensor, seg: Segment, slot: int) -> torch.Tensor:
    """KV of one segment: [t1 - t0, num_kv_heads, head_size] (a view or a workspace slice)."""
    if isinstance(seg.blocks, int):
        flat = cache[seg.blocks : seg.blocks + seg.num_blocks].flatten(0, 1)
    else:
        ws = _get_workspace(cache, seg.num_blocks, slot)[: seg.num_blocks]
        torch.index_select(cache, 0, seg.blocks, out=ws)
        flat = ws.flatten(0, 1)
    return flat[seg.t0 : seg.t1]


def _attend_folded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """Non-causal attention of q [L, hq, d] over k, v [S, hkv, d]; returns (out [L, hq, d], lse [hq, L])."""
    n_tok, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    # NOTE(medha): fold the GQA group into the query length ([hkv, group*L]
    # rows) so each KV head is streamed once for all its query heads; this
    # halves decode time versus torch's native GQA, which re-reads K/V per head.
    qf = q.reshape(n_tok, hkv, group, d).permute(1, 2, 0, 3).reshape(1, hkv, group * n_tok, d)
    o, lse = _flash_cpu(qf, k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0), 0.0, False, scale=scale)
    o = o[0].view(hkv, group, n_tok, d).permute(2, 0, 1, 3).reshape(n_tok, hq, d)
    return o, lse[0].reshape(hq, n_tok)


def _attend_blocked(q: torch.Tensor, num_kv_heads: int, pieces, scale: float):
    """Non-causal attention of float32 q [L, hq, d] over (k, v) pieces [S_i, hkv, d], S_i > 0.

    One online softmax across all pieces (no merges): bmm scores per
    BLOCKED_TILE keys, running max / sum / accumulator per row. Returns
    (out [L, hq, d] float32, lse [hq, L]).
    """
    n_tok, hq, d = q.shape
    group = hq // num_kv_heads
    qf = (q * scale).reshape(n_tok, num_kv_heads, group, d).permute(1, 2, 0, 3).reshape(num_kv_heads, -1, d)
    m = torch.full((num_kv_heads, qf.shape[1], 1), -math.inf)
    l, acc = torch.zeros_like(m), torch.zeros_like(qf)
    for k, v in pieces:
        for s0 in range(0, k.shape[0], BLOCKED_TILE):
            kb, vb = k[s0 : s0 + BLOCKED_TILE].transpose(0, 1), v[s0 : s0 + BLOCKED_TILE].transpose(0, 1)
            scores = torch.bmm(qf, kb.transpose(1, 2))  # [hkv, rows, tile]
            m_new = torch.maximum(m, scores.amax(-1, keepdim=True))
            scores.sub_(m_new).exp_()
            alpha = torch.exp(m - m_new)  # 0 on the first tile (m = -inf)
            l.mul_(alpha).add_(scores.sum(-1, keepdim=True))
            acc.mul_(alpha).baddbmm_(scores, vb)
            m = m_new
    out = (acc / l).view(num_kv_heads, group, n_tok, d).permute(2, 0, 1, 3).reshape(n_tok, hq, d)
    return out, (m + l.log()).reshape(hq, n_tok)


def _attend_tail(q, k, v, local_pos: torch.Tensor, first: int, scale: float):
    """Causal tail: q [L, hq, d] over shard-local tokens first..first+T-1 of k, v [T, hkv, d]."""
    n_tok, n_kv = q.shape[0], k.shape[0]
    q4 = q.transpose(0, 1).unsqueeze(0)
    k4, v4 = k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0)
    aligned = n_kv == n_tok and bool(torch.equal(local_pos, torch.arange(first, first + n_tok)))
    if aligned:
        # The prefill chunk's own diagonal block: torch's top-left causal mask is exact.
        o, lse = _flash_cpu(q4, k4, v4, 0.0, True, scale=scale)
        return o[0].transpose(0, 1), lse[0]
    visible = torch.arange(first, first + n_kv)[None, :] <= local_pos[:, None]  # [L, T]
    mask = torch.zeros(visible.shape, dtype=q.dtype).masked_fill_(~visible, -math.inf)
    o, lse = _flash_cpu(q4, k4, v4, 0.0, False, attn_mask=mask, scale=scale)
    o, lse = o[0].transpose(0, 1), lse[0]
    blind = ~visible.any(dim=1)  # rows that see no tail token: kernel returns 0 / lse 0
    if bool(blind.any()):
        o = o.masked_fill(blind[:, None, None], 0.0)
        lse = lse.masked_fill(blind[None, :], -math.inf)
    return o, lse


def _merge_into(acc_o: torch.Tensor, acc_lse: torch.Tensor, o: torch.Tensor, lse: torch.Tensor) -> None:
    """In-place exact merge of state (o, lse) into (acc_o float32, acc_lse); layouts as in lse.py."""
    m = torch.maximum(acc_lse, lse)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    a, b = torch.exp(acc_lse - m), torch.exp(lse - m)
    total = a + b
    inv = 1.0 / total.clamp_min(torch.finfo(torch.float32).tiny)
    acc_o.mul_((a * inv).t()[..., None]).add_(o * (b * inv).t()[..., None])
    torch.add(m, torch.log(total), out=acc_lse)


def shard_attention_cpu(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: ShardMetadata,
    scale: float | None = None,
    *,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast CPU version of ``reference.shard_attention_reference`` (same arguments).

    query: [num_tokens, num_q_heads, head_size]; key_cache/value_cache:
    [num_blocks, block_size, num_kv_heads, head_size] (any strides), same
    dtype (fp32/bf16/fp16), CPU tensors. Returns out [num_tokens,
    num_q_heads, head_size] in the query dtype and lse [num_q_heads,
    num_tokens] float32 natural log (-inf, out 0 where nothing is visible).
    """
    hq, hkv, d, bs = check_attention_args(query, key_cache, value_cache)
    scale = d**-0.5 if scale is None else scale
    num_tokens = query.shape[0]
    out = torch.zeros(num_tokens, hq, d, dtype=query.dtype)
    lse = torch.full((hq, num_tokens), -math.inf, dtype=torch.float32)
    viewable = _is_token_viewable(key_cache) and _is_token_viewable(value_cache)
    bytes_per_block = bs * hkv * d * key_cache.element_size()
    max_gather_blocks = max(1, workspace_bytes // bytes_per_block)
    # NOTE(medha): the bmm path issues ~8 small ops per BLOCKED_TILE keys; with
    # several intra-op threads each op pays an OpenMP barrier, and on cores
    # shared with another busy process those barriers cost far more than the
    # path saves (measured 20x slower with 2 threads next to a vLLM worker).
    # Multi-threaded, torch's flash kernel (one op per segment) is as fast.
    use_blocked = query.dtype == torch.float32 and torch.get_num_threads() == 1
    qsl, kv_lens = meta.query_start_loc.tolist(), meta.kv_lens.tolist()
    for i in range(meta.num_seqs):
        q0, q1, kv_len = qsl[i], qsl[i + 1], kv_lens[i]
        if q1 == q0 or kv_len == 0:
            continue
        q, row = query[q0:q1], meta.block_table[i]
        full_end, tail_end, local_pos = kv_len, kv_len, None
        if meta.causal:
            local_pos = meta.query_positions[q0:q1].to(torch.long) - int(meta.shard_start[i])
            # Tokens before the earliest query position are seen by every row.
            full_end = min(max(int(local_pos.min()), 0), kv_len)
            tail_end = min(max(int(local_pos.max()) + 1, 0), kv_len)
        states = []
        segments = _plan_visible(row, full_end, bs, viewable, max_gather_blocks)
        pieces = ((_segment_kv(key_cache, seg, 0), _segment_kv(value_cache, seg, 1)) for seg in segments)
        if segments and use_blocked and BLOCKED_MIN_ROWS <= (hq // hkv) * (q1 - q0) < BLOCKED_MAX_ROWS:
            states.append(_attend_blocked(q, hkv, pieces, scale))
        else:
            states.extend(_attend_folded(q, k, v, scale) for k, v in pieces)
        if tail_end > full_end:
            seg = _plan_ordered(row, full_end, tail_end, bs)
            k, v = _segment_kv(key_cache, seg, 0), _segment_kv(value_cache, seg, 1)
            states.append(_attend_tail(q, k, v, local_pos, full_end, scale))
        if not states:  # every query row precedes this shard
            continue
        if len(states) == 1:
            out[q0:q1], lse[:, q0:q1] = states[0]
            continue
        acc_o, acc_lse = states[0][0].float(), states[0][1].clone()
        for o, s in states[1:]:
            _merge_into(acc_o, acc_lse, o, s)
        out[q0:q1], lse[:, q0:q1] = acc_o, acc_lse
    return out, lse
