"""Builders of random paged, sharded attention problems (tests and benchmarks).

A problem is a batch of sequences, each with ``ctx_len`` tokens of context
followed by ``q_len`` new query tokens whose KV is already written (vLLM
writes the step's KV before attention). Its KV is split along the sequence
into ``num_shards`` contiguous ranges, each stored in its own randomly
placed blocks of one shared pool, exactly as KVP groups hold them; the same
tokens are also paged once more as a single unsharded shard, for the
"full attention equals merge of shards" check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .metadata import ShardMetadata


@dataclass
class ShardedProblem:
    # [num_tokens, num_q_heads, head_size] packed query tokens of all sequences.
    query: torch.Tensor
    # [num_blocks, block_size, num_kv_heads, head_size] views (layout may be strided).
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    # The whole KV of every sequence as one shard (causal when `causal`).
    full: ShardMetadata
    # One metadata per shard; only the last (owner of the query tokens) is causal.
    shards: list[ShardMetadata]
    # Per sequence, the num_shards + 1 shard boundaries in absolute positions.
    bounds: list[list[int]]


def random_bounds(total: int, num_shards: int, owner_min: int, gen: torch.Generator) -> list[int]:
    """Uneven boundaries 0 = b0 <= ... <= bN = total, last shard holding >= owner_min tokens.

    Empty shards are likely: cut points are drawn with replacement and
    sometimes snapped together.
    """
    head = total - owner_min
    cuts = sorted(torch.randint(0, head + 1, (num_shards - 1,), generator=gen).tolist())
    if num_shards > 2 and torch.rand((), generator=gen).item() < 0.5:
        cuts[0] = cuts[1]  # force an empty interior shard
    return [0, *cuts, total]


def make_sharded_problem(
    q_lens: list[int],
    ctx_lens: list[int],
    num_shards: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_size: int,
    dtype: torch.dtype = torch.float32,
    *,
    block_size: int = 16,
    causal: bool = True,
    layout: str = "NHD",
    contiguous_blocks: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> ShardedProblem:
    """Random problem; ``layout`` "NHD" (contiguous), "HND" (strided view of a head-major pool)
    or "CPU_ATTN" (vLLM's CPU cache, ISA vec: K transposed per block; block_size % 16 == 0).

    ``contiguous_blocks`` allocates each shard's blocks in increasing physical
    order (a fresh vLLM block pool) instead of a random permutation.
    """
    gen = torch.Generator().manual_seed(seed)
    num_seqs = len(q_lens)
    totals = [c + q for c, q in zip(ctx_lens, q_lens)]
    # NOTE(medha): a prefill chunk never crosses a KVP group boundary, so the
    # owner (last) shard holds at least the query tokens' own KV.
    bounds = [random_bounds(t, num_shards, q, gen) for t, q in zip(totals, q_lens)]
    pieces = [(i, b[j], b[j + 1]) for i, b in enumerate(bounds) for j in range(num_shards)]
    pieces += [(i, 0, totals[i]) for i in range(num_seqs)]  # the unsharded copy
    blocks_needed = [-(-(hi - lo) // block_size) for _, lo, hi in pieces]
    num_blocks = sum(blocks_needed) + 3
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    if contiguous_blocks:
        perm = torch.arange(num_blocks, dtype=torch.int32)
    keys = [torch.randn(t, num_kv_heads, head_size, generator=gen) for t in totals]
    vals = [torch.randn(t, num_kv_heads, head_size, generator=gen) for t in totals]
    shape = (num_blocks, block_size, num_kv_heads, head_size)
    if layout == "NHD":
        kc, vc = torch.zeros(shape), torch.zeros(shape)
    elif layout == "HND":
        kc = torch.zeros(num_blocks, num_kv_heads, block_size, head_size).transpose(1, 2)
        vc = torch.zeros(num_blocks, num_kv_heads, block_size, head_size).transpose(1, 2)
    elif layout == "CPU_ATTN":
        from .kv_layout import cpu_attn_kv_views

        # NOTE(medha): built in the target dtype, since a .to() of these
        # interleaved views would copy them into a contiguous NHD tensor.
        pool = torch.zeros(num_blocks, num_kv_heads, block_size, 2 * head_size, dtype=dtype)
        kc, vc = cpu_attn_kv_views(pool, "vec")
    else:
        raise ValueError(f"layout must be NHD, HND or CPU_ATTN, got {layout!r}")
    tables, cursor = [], 0
    for (i, lo, hi), n in zip(pieces, blocks_needed):
        ids = perm[cursor : cursor + n]
        cursor += n
        for b in range(n):
            t0, t1 = lo + b * block_size, min(lo + (b + 1) * block_size, hi)
            kc[ids[b], : t1 - t0] = keys[i][t0:t1]
            vc[ids[b], : t1 - t0] = vals[i][t0:t1]
        tables.append(ids)
    query = torch.randn(sum(q_lens), num_q_heads, head_size, generator=gen)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    positions = torch.cat([torch.arange(c, c + q) for c, q in zip(ctx_lens, q_lens)]).to(torch.int32)

    def meta(table_rows: list[torch.Tensor], lo: list[int], hi: list[int], is_causal: bool) -> ShardMetadata:
        width = max(1, max(t.numel() for t in table_rows))
        # Padding entries point at a random real block: kernels must ignore them.
        table = torch.full((num_seqs, width), int(perm[-1]), dtype=torch.int32)
        for r, t in enumerate(table_rows):
            table[r, : t.numel()] = t
        return ShardMetadata(
            query_start_loc=qsl,
            block_table=table,
            kv_lens=torch.tensor([h - l for l, h in zip(lo, hi)], dtype=torch.int32),
            causal=is_causal,
            query_positions=positions,
            shard_start=torch.tensor(lo, dtype=torch.int32),
        ).to(device)

    shards = []
    for j in range(num_shards):
        rows = [tables[i * num_shards + j] for i in range(num_seqs)]
        lo = [bounds[i][j] for i in range(num_seqs)]
        hi = [bounds[i][j + 1] for i in range(num_seqs)]
        shards.append(meta(rows, lo, hi, causal and j == num_shards - 1))
    full_rows = tables[num_seqs * num_shards :]
    full = meta(full_rows, [0] * num_seqs, totals, causal)
    to = dict(device=device, dtype=dtype)
    if layout != "CPU_ATTN":
        kc, vc = kc.to(**to), vc.to(**to)
    return ShardedProblem(query.to(**to), kc, vc, full, shards, bounds)


def assert_states_close(
    got: tuple[torch.Tensor, torch.Tensor],
    want: tuple[torch.Tensor, torch.Tensor],
    atol: float,
    rtol: float,
    lse_atol: float,
    what: str = "",
) -> None:
    """Compare two (out, lse) states in float32; -inf LSEs must match exactly.

    out: [num_tokens, num_heads, head_size]; lse: [num_heads, num_tokens].
    """
    (go, gl), (wo, wl) = got, want
    assert go.shape == wo.shape and gl.shape == wl.shape, f"{what}: shape {go.shape}/{gl.shape} vs {wo.shape}/{wl.shape}"
    assert not torch.isnan(go).any() and not torch.isnan(gl).any(), f"{what}: NaN in result"
    empty = torch.isneginf(wl)
    assert torch.equal(torch.isneginf(gl), empty), f"{what}: -inf LSE pattern differs"
    torch.testing.assert_close(gl.float().masked_fill(empty, 0), wl.float().masked_fill(empty, 0), atol=lse_atol, rtol=0, msg=lambda m: f"{what} lse: {m}")
    torch.testing.assert_close(go.float(), wo.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what} out: {m}")
    if empty.any():
        assert (go.float().transpose(0, 1)[empty] == 0).all(), f"{what}: rows with lse=-inf must be 0"
