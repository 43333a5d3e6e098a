"""MedhaCPUAttentionBackend: vLLM's CPU_ATTN with the native KV-split kernel in its forward.

It keeps everything of CPU_ATTN that vLLM's other parts rely on (name, cache
shape and layout, the cache writer, its metadata fields) and changes two
things, only where ``selection`` chose the Medha backend for the KV-cache
group: the builder fixes the cache ISA to ``vec``/``vec16`` (the packing the
native kernel reads; vLLM would pick ``amx`` for bfloat16 on AMX hosts) and,
for each step the native kernel serves (``BackendChoice.native_for``: every
step with ``--medha-attention-backend medha``, the measured winners with
``auto``), adds one ``ShardMetadata`` per KV shard (today one: the whole KV,
causal; KV-cache parallelism adds one per group); the impl's forward then
calls ``kernels.native.shard_attention_native`` on the cache in place,
writing the output into vLLM's buffer and the log-sum-exp into a per-layer
buffer. Other steps run CPU_ATTN's kernel on the same cache.
Without ``--scheduler medha``, or where CPU_ATTN was chosen, every method is
CPU_ATTN's own.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, fields

import torch
from vllm.config import get_layers_from_vllm_config
from vllm.logger import init_logger
from vllm.model_executor.layers.attention import Attention
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)

from medha_vllm.kernels import ShardMetadata, cpu_attn_kv_views
from medha_vllm.kernels.kv_layout import cpu_attn_native_isa
from medha_vllm.kernels import native
from medha_vllm.kvp import runtime as kvp_runtime

from .selection import (AttentionShape, BackendChoice, LayerFeatures, MedhaAttentionError,
                        bf16_emulation_warning, decide,
                        measured_cached, refusal)

logger = init_logger(f"vllm.{__name__}")

# Forward calls served by each kernel in this process (tests read it to show
# which path ran).
CALLS: collections.Counter = collections.Counter()
_logged: set = set()


def medha_selected(vllm_config) -> bool:
    from medha_vllm import is_medha_scheduler

    return is_medha_scheduler(getattr(vllm_config.scheduler_config, "scheduler_cls", None))


def choose_for_group(builder: CPUAttentionMetadataBuilder, layer_names: list[str]) -> BackendChoice:
    """Run the selection policy for one KV-cache group of this worker."""
    config = builder.vllm_config
    if not medha_selected(config):
        return BackendChoice("vllm", "Medha not selected")
    from medha_vllm.config import MedhaConfig

    option = MedhaConfig.from_vllm_config(config).attention_backend
    impls = [layer.impl for layer in get_layers_from_vllm_config(config, Attention, layer_names).values()]
    features = LayerFeatures(
        sliding_window=any(getattr(i, "sliding_window", -1) not in (-1, None) for i in impls),
        alibi=any(getattr(i, "alibi_slopes", None) is not None for i in impls),
        softcap=any(bool(getattr(i, "logits_soft_cap", 0)) for i in impls),
        sinks=any(getattr(i, "sinks", None) is not None for i in impls),
        non_decoder=builder.is_cross_attention or builder.is_encoder_only_attention
        or any(getattr(i, "attn_type", AttentionType.DECODER) != AttentionType.DECODER for i in impls))
    shape = AttentionShape(
        num_heads=builder.num_heads, num_kv_heads=builder.num_kv_heads, head_size=builder.head_dim,
        block_size=builder.block_size, dtype=str(builder.dtype).removeprefix("torch."),
        kv_cache_dtype=str(builder.kv_cache_dtype), threads=torch.get_num_threads(),
        context=int(config.model_config.max_model_len))

    def kernel_reason() -> str | None:
        if not native.available():
            return f"the native kernel is unavailable ({native.unavailable_reason()})"
        # supports() checks head size and block alignment on tensors of this shape.
        q = torch.empty(1, shape.num_heads, shape.head_size, dtype=builder.dtype)
        kv = torch.empty(1, shape.num_kv_heads, shape.block_size, 2 * shape.head_size, dtype=builder.dtype)
        return native.supports(q, *cpu_attn_kv_views(kv, cpu_attn_native_isa(shape.head_size)))

    warning = bf16_emulation_warning(shape.dtype, native._cpu_flags())
    if warning and warning not in _logged:
        _logged.add(warning)
        logger.warning("medha: %s", warning)
    if kvp_runtime.active():
        choice = kvp_choice(refusal(shape, features, kernel_reason), kvp_runtime.get().groups)
    else:
        choice = decide(option, refusal(shape, features, kernel_reason), measured_cached(shape))
    key = (choice.backend, choice.reason)
    if key not in _logged:
        _logged.add(key)
        name = "Medha's native KV-split kernel" if choice.backend == "medha" else "vLLM's CPU_ATTN kernel"
        logger.info("medha: attention on %s (%d layers, %s): %s", name, len(impls), shape.dtype, choice.reason)
    return choice


def kvp_choice(why_not: str | None, groups: int) -> BackendChoice:
    """KV-cache parallelism needs each shard's log-sum-exp: the native
    kernel serves every step, or start-up stops naming the setting."""
    if why_not is not None:
        raise MedhaAttentionError(
            f"--medha-kv-parallel-size {groups} needs Medha's attention kernel (it returns each "
            f"KV shard's log-sum-exp), which cannot serve this model: {why_not}")
    return BackendChoice("medha", f"KV-cache parallelism ({groups} groups): the native kernel "
                                  "serves every step and the groups' states are merged by LSE")


def step_shard(query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor, causal: bool,
               max_query_len: int | None = None, max_seq_len: int | None = None,
               group: int = 0, shard_tokens: int | None = None, block_size: int | None = None
               ) -> ShardMetadata:
    """This worker's KV shard of a step. Without KV-cache parallelism
    (``shard_tokens`` None) it is all of each sequence's KV (``seq_lens``
    tokens, prefix-cache hits and earlier chunks included); with it, KVP
    group ``group``'s token range [g x S, (g + 1) x S) of each sequence
    (kvp/runtime.shard_view). The query tokens are each sequence's last
    ``q_len`` positions; the mask is causal by absolute position, so a group
    whose range lies wholly before the queries sees all of it."""
    n = seq_lens.numel()
    qsl = query_start_loc.to(torch.int32)
    seq_lens = seq_lens.to(torch.int32)
    q_lens = (qsl[1:] - qsl[:-1]).long()
    # Absolute position of each query token: its sequence's computed tokens
    # + its index in the chunk.
    first = (seq_lens.long() - q_lens).repeat_interleave(q_lens)
    offset = torch.arange(int(q_lens.sum())) - qsl[:-1].long().repeat_interleave(q_lens)
    if shard_tokens is None:
        table, kv_lens, start = block_table.to(torch.int32), seq_lens, torch.zeros(n, dtype=torch.int64)
    else:
        table, kv_lens, start = kvp_runtime.shard_view(block_table.to(torch.int32), seq_lens, group,
                                                       shard_tokens, block_size)
        max_seq_len = min(max_seq_len, shard_tokens) if max_seq_len is not None else None
    return ShardMetadata(qsl, table, kv_lens, causal=causal, query_positions=first + offset,
                         shard_start=start, max_query_len=max_query_len, max_kv_len=max_seq_len)


@dataclass
class MedhaCPUAttentionMetadata(CPUAttentionMetadata):
    # One ShardMetadata per KV shard of this worker (today one: all of the KV).
    shards: list[ShardMetadata] | None = None


class MedhaCPUAttentionMetadataBuilder(CPUAttentionMetadataBuilder):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.choice = choose_for_group(self, layer_names)
        if self.choice.backend == "medha":
            # NOTE(medha): vLLM's writer packs the cache for self.isa; the
            # native kernel reads the vec/vec16 packing.
            self.isa = cpu_attn_native_isa(self.head_dim)
            self._set_isa_to_layers(layer_names)

    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        kvp = kvp_runtime.get()
        if kvp is None and (md.dynamic_causal is not None or not self.choice.native_for(
                int(common_attn_metadata.max_query_len), int(common_attn_metadata.max_seq_len))):
            return md  # CPU_ATTN's own kernel serves this step
        if kvp is not None and (md.dynamic_causal is not None or not md.causal):
            raise NotImplementedError("medha KVP: non-causal attention steps are not supported")
        cm = common_attn_metadata
        shard_args = {} if kvp is None or kvp.plan is None else {
            "group": kvp.group, "shard_tokens": kvp.plan.shard_tokens, "block_size": self.block_size}
        shard = step_shard(cm.query_start_loc[: cm.num_reqs + 1], cm.seq_lens[: cm.num_reqs],
                           cm.block_table_tensor[: cm.num_reqs], bool(md.causal),
                           int(cm.max_query_len), int(cm.max_seq_len), **shard_args)
        return MedhaCPUAttentionMetadata(**{f.name: getattr(md, f.name) for f in fields(md)}, shards=[shard])


class MedhaCPUAttentionBackendImpl(CPUAttentionBackendImpl):
    # Flat float32 buffer; lse_view(n) is the (num_heads, n) LSE of the last call.
    _lse: torch.Tensor | None = None

    def lse_view(self, n: int) -> torch.Tensor:
        return self._lse[: self.num_heads * n].view(self.num_heads, n)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        shards = getattr(attn_metadata, "shards", None)
        if shards is None or output_scale is not None or output_block_scale is not None:
            CALLS["vllm"] += attn_metadata is not None
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                   output_block_scale)
        n = attn_metadata.num_actual_tokens
        k, v = cpu_attn_kv_views(kv_cache, layer.isa)
        if self._lse is None or self._lse.numel() < self.num_heads * n:
            # (num_heads, tokens) float32, the project's LSE convention; KVP merges from it.
            self._lse = torch.empty(self.num_heads * max(n, 256), dtype=torch.float32)
        native.shard_attention_native(query[:n], k, v, shards[0], self.scale, out=output[:n],
                                      lse=self.lse_view(n))
        CALLS["medha"] += 1
        if kvp_runtime.active():
            # Every group ran the same queries over its own token range.
            kvp_runtime.merge_across_groups(output[:n], self.lse_view(n))
            CALLS["kvp_merge"] += 1
        return output


class MedhaCPUAttentionBackend(CPUAttentionBackend):
    """CPU_ATTN's name, cache and writer; Medha's builder and forward."""

    @staticmethod
    def get_impl_cls():
        return MedhaCPUAttentionBackendImpl

    @staticmethod
    def get_builder_cls():
        return MedhaCPUAttentionMetadataBuilder
