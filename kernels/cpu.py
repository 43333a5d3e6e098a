"""Fast CPU shard attention: torch's CPU flash kernel over KV segments, merged exactly.

Strategy (one sequence at a time):

1. Split the shard's KV range into the part every query token sees (all of
   it on non-causal shards; positions before the earliest query on the
   causal shard) and the causal tail.
2. Cut the visible part into *segments*: a run of physically consecutive
   blocks is a zero-copy strided view of the cache; scattered blocks are
   gathered (``index_select``) into a reused workspace, up to
   ``workspace_bytes`` per segment.
3. Run ``aten._scaled_dot_product_flash_attention_for_cpu`` (which returns
   the natural-log LSE) on each segment, with the GQA group folded into the
   query length so one pass over a KV head serves all its query heads.
4. The tail runs with ``is_causal`` when it is the usual square diagonal
   block of a prefill chunk, else with an explicit mask.
5. Merge the segment states exactly (online softmax, ``merge.py``).

NOTE(medha): a merge of segments is the same exact combination KVP uses
across shards, so splitting here changes reduction order only, not the math.
"""

from __future__ import annotations

import math

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


def _plan_segments(
    row: torch.Tensor, lo: int, hi: int, block_size: int, viewable: bool, max_gather_blocks: int
) -> list[tuple[int, int, bool]]:
    """Cut shard-local tokens [lo, hi) into (first_block, end_block, is_view) in token order."""
    b0, b1 = lo // block_size, -(-hi // block_size)
    blocks = row[b0:b1].to(torch.long)
    breaks = ((blocks[1:] - blocks[:-1]) != 1).nonzero().flatten().add_(1).tolist()
    runs = zip([0, *breaks], [*breaks, b1 - b0])
    segments: list[tuple[int, int, bool]] = []
    pending: tuple[int, int] | None = None
    for r0, r1 in runs:
        r0, r1 = r0 + b0, r1 + b0
        if viewable and (r1 - r0) * block_size >= MIN_VIEW_TOKENS:
            if pending:
                segments.append((*pending, False))
                pending = None
            segments.append((r0, r1, True))
            continue
        while r0 < r1:  # append this short run to the gather group, splitting at the cap
            if pending is None:
                pending = (r0, r0)
            take = min(r1 - r0, max_gather_blocks - (pending[1] - pending[0]))
            pending = (pending[0], pending[1] + take)
            r0 += take
            if pending[1] - pending[0] == max_gather_blocks:
                segments.append((*pending, False))
                pending = None
    if pending:
        segments.append((*pending, False))
    return segments


def _segment_kv(
    cache: torch.Tensor, row: torch.Tensor, seg: tuple[int, int, bool], lo: int, hi: int, slot: int
) -> torch.Tensor:
    """KV tokens of one segment clipped to [lo, hi): [num_tokens, num_kv_heads, head_size]."""
    first, end, is_view = seg
    bs = cache.shape[1]
    if is_view:
        start = int(row[first])
        flat = cache[start : start + end - first].flatten(0, 1)
    else:
        n = end - first
        ws = _get_workspace(cache, n, slot)
        torch.index_select(cache, 0, row[first:end], out=ws[:n])
        flat = ws[:n].flatten(0, 1)
    t0 = max(lo, first * bs) - first * bs
    t1 = min(hi, end * bs) - first * bs
    return flat[t0:t1]


def _attend_folded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """Non-causal attention of q [L, hq, d] over k, v [S, hkv, d]; returns (out [L, hq, d], lse [hq, L])."""
    n_tok, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    # NOTE(medha): fold the GQA group into the query length ([hkv, group*L]
    # rows) so each KV head is streamed once for all its query heads; this
    # halves decode time versus torch's native GQA, which re-reads K/V per head.
    qf = q.view(n_tok, hkv, group, d).permute(1, 2, 0, 3).reshape(1, hkv, group * n_tok, d)
    o, lse = _flash_cpu(qf, k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0), 0.0, False, scale=scale)
    o = o[0].view(hkv, group, n_tok, d).permute(2, 0, 1, 3).reshape(n_tok, hq, d)
    return o, lse[0].reshape(hq, n_tok)


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
        for seg in _plan_segments(row, 0, full_end, bs, viewable, max_gather_blocks):
            k = _segment_kv(key_cache, row, seg, 0, full_end, 0)
            v = _segment_kv(value_cache, row, seg, 0, full_end, 1)
            states.append(_attend_folded(q, k, v, scale))
        if tail_end > full_end:
            segs = _plan_segments(row, full_end, tail_end, bs, False, 1 << 30)
            k = _segment_kv(key_cache, row, segs[0], full_end, tail_end, 0)
            v = _segment_kv(value_cache, row, segs[0], full_end, tail_end, 1)
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
