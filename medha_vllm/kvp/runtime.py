"""Worker-side KVP state: which group this worker is, its shard of each
step's KV, and the exact cross-group merge of the attention states.

Set up by `KVPWorker` (worker.py) in each worker process; read by the
attention backend (medha_vllm/attention/backend.py). Without KVP nothing here
is set and `active()` is False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medha_vllm.kernels.merge import merge_attn_states_torch
from medha_vllm.kvp.plan import KvpPlan


@dataclass
class KvpRuntime:
    # This worker's KVP group (0 = the first tokens of every request).
    group: int
    groups: int
    # vLLM GroupCoordinator of the ranks that hold this rank's (pp, tp)
    # position in every group, in group order.
    coordinator: Any
    # Set once the KV cache is allocated (initialize_from_config).
    plan: KvpPlan | None = None
    # Bytes this worker sent to the other groups' workers, and merges done.
    bytes_sent: int = 0
    merges: int = 0
    merge_time_s: float = 0.0


_RT: KvpRuntime | None = None


def set_runtime(rt: KvpRuntime | None) -> None:
    global _RT
    _RT = rt


def get() -> KvpRuntime | None:
    return _RT


def active() -> bool:
    return _RT is not None


def localize_ids(ids: list[int], group: int, blocks_per_group: int) -> list[int]:
    """Global block ids of the scheduler -> this group's cache: the group's
    own blocks to their local ids, every other group's block to local 0 (the
    group's null block: writes of tokens another group owns land there and
    are never read)."""
    lo = group * blocks_per_group
    hi = lo + blocks_per_group
    return [b - lo if lo <= b < hi else 0 for b in ids]


def localize_scheduler_output(so: Any, group: int, blocks_per_group: int) -> None:
    """Rewrite a SchedulerOutput's block ids in place for `group` (once)."""
    if getattr(so, "_medha_kvp_localized", False):
        return
    for req in so.scheduled_new_reqs:
        req.block_ids = tuple(localize_ids(ids, group, blocks_per_group) for ids in req.block_ids)
    cached = so.scheduled_cached_reqs
    cached.new_block_ids = [
        None if ids is None else tuple(localize_ids(x, group, blocks_per_group) for x in ids)
        for ids in cached.new_block_ids]
    if so.new_block_ids_to_zero:
        lo = group * blocks_per_group
        so.new_block_ids_to_zero = [b - lo for b in so.new_block_ids_to_zero
                                    if lo <= b < lo + blocks_per_group and b != lo]
    if so.kv_cache_block_copies:
        raise RuntimeError("medha KVP: KV block copies (prefix-cache copy-on-write) are not "
                           "supported with KV-cache parallelism")
    so._medha_kvp_localized = True


def shard_view(block_table: torch.Tensor, seq_lens: torch.Tensor, group: int, shard_tokens: int,
               block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(block table, KV lengths, shard start) of `group`'s part of each
    sequence: tokens [g x S, min((g + 1) x S, seq_len))."""
    start = group * shard_tokens
    kv_lens = (seq_lens.to(torch.int32) - start).clamp_(0, shard_tokens)
    first_block = start // block_size
    if first_block >= block_table.shape[1]:  # no sequence reaches this group
        table = block_table[:, :1]
        kv_lens.zero_()
    else:
        table = block_table[:, first_block:]
    starts = torch.full((seq_lens.numel(),), start, dtype=torch.int64)
    return table, kv_lens, starts


def merge_across_groups(out: torch.Tensor, lse: torch.Tensor) -> None:
    """Replace this group's partial attention state (out [T, H, D], lse
    [H, T] float32) by the exact merge of every group's, in group order:
    every group computes the same merge of the same states, so all hold
    bitwise-identical results. Traffic: T x H x (D + 1) values per group,
    whatever the context length."""
    import time

    rt = _RT
    t0 = time.perf_counter()
    # One collective a layer: this group's output (float32) and LSE packed.
    n_out = out.numel()
    packed = torch.cat([out.reshape(-1).float(), lse.reshape(-1)])
    every = rt.coordinator.all_gather(packed, dim=0).view(rt.groups, -1)
    outs = every[:, :n_out].view(rt.groups, *out.shape)
    lses = every[:, n_out:].view(rt.groups, *lse.shape)
    merged, _ = merge_attn_states_torch(outs, lses, out_dtype=out.dtype)
    out.copy_(merged)
    rt.bytes_sent += packed.numel() * 4 * (rt.groups - 1)
    rt.merges += 1
    rt.merge_time_s += time.perf_counter() - t0
