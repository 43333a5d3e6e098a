"""Which attention kernel serves a model on CPU: policy (pure) and its one measurement.

``--medha-attention-backend`` (``attention_backend`` in the ``medha``
additional config) is ``auto`` (default), ``medha`` or ``vllm``:

- ``vllm``: vLLM's CPU_ATTN, as without the plugin;
- ``medha``: the native KV-split kernel (``kernels/native.py``); a model it
  cannot serve stops start-up with a message naming the setting and why;
- ``auto``: the native kernel where it serves the model and measures at least
  as fast as CPU_ATTN on this host for the served shape, else CPU_ATTN with
  one INFO line saying why.

The measurement (``measure``) times both kernels in the worker on the served
shape (query/KV heads per worker, head size, dtype, block size, the worker's
threads) over a grid: contexts 4K/16K/64K (those ``max_model_len`` reaches) x
query runs of 1 (decode), 32, 128 and 512 tokens (the top context is the
deployment's own longest, ``grid_contexts``). Both kernels read the same
cache (ISA ``vec``), so the backend picks per step: the native kernel serves
a step whose (longest context, longest query run) cell it won, CPU_ATTN the
others (measured on this project's Intel host in float32: the native kernel
wins small chunks and long decodes, CPU_ATTN large chunks and short
contexts). If it wins no cell (e.g. bfloat16 on an AMX host, where CPU_ATTN
uses AMX tiles) CPU_ATTN serves unchanged, AMX packing included. The timings
are cached on disk per host, shape and kernel build, so repeated starts
choose alike (timings on these hosts vary by +-20 %).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

OPTION = "--medha-attention-backend"
# The grid the auto choice measures: query tokens of the longest run in a
# step (1 = decode) x the longest sequence's context.
MEASURE_CHUNKS = (1, 32, 128, 512)
GRID_CONTEXTS = (4096, 16384, 65536)


class MedhaAttentionError(RuntimeError):
    """--medha-attention-backend medha was asked for a model the kernel cannot serve."""


@dataclass(frozen=True)
class AttentionShape:
    """What the kernel choice depends on, for one KV-cache group of one worker."""

    num_heads: int
    num_kv_heads: int
    head_size: int
    block_size: int
    dtype: str  # "float32", "bfloat16", ...
    kv_cache_dtype: str
    threads: int
    context: int  # the context the deployment serves (max_model_len)


@dataclass(frozen=True)
class LayerFeatures:
    """Attention features of the group's layers the native kernel does not implement."""

    sliding_window: bool = False
    alibi: bool = False
    softcap: bool = False
    sinks: bool = False
    non_decoder: bool = False  # encoder, encoder-only, cross attention


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # "medha" (this backend serves, per call) or "vllm" (CPU_ATTN as is)
    reason: str
    # Grid cells (context, chunk) where the native kernel serves a step; None:
    # every step (an explicit --medha-attention-backend medha). See native_for().
    native_cells: frozenset | None = None
    # Seconds per call of each kernel: {"vllm"|"medha": {(context, chunk): s}} (auto only).
    timings: dict | None = None

    def native_for(self, max_query_len: int, max_seq_len: int) -> bool:
        """Whether the native kernel serves a step whose longest query run is
        ``max_query_len`` tokens and longest sequence ``max_seq_len`` tokens
        (the cell of the measured grid the step falls in: context rounded
        down, chunk rounded up, clamped to the grid). Both kernels are exact
        on the same cache; this only picks the faster one for the step."""
        if self.backend != "medha":
            return False
        if self.native_cells is None:
            return True
        contexts = sorted({ctx for ctx, _ in self.timings["vllm"]}) if self.timings else GRID_CONTEXTS
        return (_bucket_down(contexts, max_seq_len), _bucket_up(MEASURE_CHUNKS, max_query_len)) \
            in self.native_cells


def _bucket_down(grid, x):
    return max([g for g in grid if g <= x], default=grid[0])


def _bucket_up(grid, x):
    return min([g for g in grid if g >= x], default=grid[-1])


def bf16_emulation_warning(dtype: str, cpu_flags: str) -> str | None:
    """The start-up warning for bfloat16 on an x86 CPU without native
    bfloat16 arithmetic (no AVX512-BF16, no AMX-BF16), else None. Measured on
    such a host (AVX2 only): the synthetic model ran ~5x slower than in float32."""
    flags = set(cpu_flags.split())
    if dtype != "bfloat16" or "avx2" not in flags or flags & {"avx512_bf16", "amx_bf16"}:
        return None
    return ("bfloat16 is emulated on this CPU (no AVX512-BF16 or AMX-BF16): matrix products fall back to "
            "slow paths; --dtype float32 is recommended here (vLLM loads a float32 checkpoint as "
            "bfloat16 on CPU unless told otherwise)")


def refusal(shape: AttentionShape, features: LayerFeatures, kernel_reason: Callable[[], str | None]) -> str | None:
    """Why the native kernel cannot serve this group, or None. Pure except for
    ``kernel_reason`` (the kernel's own refusal: build, head size, block size)."""
    if shape.dtype not in ("float32", "bfloat16"):
        return f"dtype {shape.dtype} (the Medha kernel serves float32 and bfloat16)"
    if shape.kv_cache_dtype != "auto":
        return f"kv_cache_dtype {shape.kv_cache_dtype} (the Medha kernel reads unquantized KV)"
    for flag, what in (("sliding_window", "sliding-window attention"), ("alibi", "ALiBi"),
                       ("softcap", "logits soft-capping"), ("sinks", "attention sinks"),
                       ("non_decoder", "encoder or cross attention")):
        if getattr(features, flag):
            return f"the model uses {what}"
    return kernel_reason()


def decide(option: str, why_not: str | None, measured: Callable[[], dict] | None) -> BackendChoice:
    """The policy. ``measured()`` returns {"vllm"|"medha": {(context, chunk): seconds}}."""
    if option == "vllm":
        return BackendChoice("vllm", f"{OPTION} vllm")
    if why_not is not None:
        if option == "medha":
            raise MedhaAttentionError(
                f"{OPTION} medha cannot serve this model: {why_not}. Use {OPTION} auto (falls back "
                f"to vLLM's CPU_ATTN) or {OPTION} vllm.")
        return BackendChoice("vllm", f"the Medha kernel cannot serve this model: {why_not}")
    if option == "medha":
        return BackendChoice("medha", f"{OPTION} medha: the native kernel serves every step")
    times = measured()
    cells = frozenset(c for c in times["vllm"] if times["medha"][c] <= times["vllm"][c])
    detail = "; ".join(f"{ctx // 1024}K x {chunk}: {times['medha'][(ctx, chunk)] / times['vllm'][(ctx, chunk)]:.2f}"
                       for ctx, chunk in sorted(times["vllm"]))
    if not cells:
        return BackendChoice("vllm", f"the native kernel measured slower than CPU_ATTN for every step shape "
                                     f"on this host (time ratio native / CPU_ATTN, context x chunk: {detail})",
                             frozenset(), times)
    won = ", ".join(f"{ctx // 1024}K x {chunk}" for ctx, chunk in sorted(cells))
    return BackendChoice("medha", f"the native kernel serves steps of shape {won} (context x chunk), "
                                  f"CPU_ATTN the others (time ratio native / CPU_ATTN: {detail})", cells, times)


# ---------------------------------------------------------------- measurement

def _choice_path(shape: AttentionShape) -> Path:
    from medha_vllm.kernels import native

    root = os.environ.get("MEDHA_CACHE_DIR") or Path.home() / ".cache" / "medha-vllm"
    key = json.dumps({"shape": asdict(shape), "kernel": native.library_path().name,
                      "cpu": native._cpu_flags()}, sort_keys=True)
    return Path(root) / "attention" / f"choice-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


# Cap on the memory of the measurement's two caches (the worker's own KV
# cache is already allocated when it runs).
MEASURE_BYTES = 256 << 20


def grid_contexts(shape: AttentionShape) -> tuple[int, ...]:
    """The contexts the choice is measured at: those of GRID_CONTEXTS below
    the longest the deployment serves, then that longest itself (its
    ``shape.context``, capped at the grid's top and at what two measurement
    caches hold in MEASURE_BYTES), so the steps a deployment spends most of
    a long prompt on are judged at their own context (a 64,528-token
    deployment at 64,528, not at 16K). A short deployment is judged at 4K."""
    elt = 4 if shape.dtype == "float32" else 2
    fits = MEASURE_BYTES // (2 * 2 * shape.num_kv_heads * shape.head_size * elt)
    top = min(shape.context, fits, GRID_CONTEXTS[-1])
    if top <= GRID_CONTEXTS[0]:
        return GRID_CONTEXTS[:1]
    return tuple(c for c in GRID_CONTEXTS if c < top) + (top,)


def measure(shape: AttentionShape, repeats: int = 3) -> dict:
    """Best-of-``repeats`` (each sample at least ~10 ms of calls) seconds per call of CPU_ATTN (with the ISA vLLM
    picks for this shape) and of the native kernel, for one sequence whose
    last ``chunk`` tokens are the query (causal), on every grid cell
    (context, chunk) the deployment reaches."""
    import torch
    import vllm._custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from medha_vllm.kernels import ShardMetadata, cpu_attn_kv_views
    from medha_vllm.kernels.kv_layout import cpu_attn_native_isa
    from medha_vllm.kernels.native import shard_attention_native

    dtype = getattr(torch, shape.dtype)
    hq, hkv, d, bs = shape.num_heads, shape.num_kv_heads, shape.head_size, shape.block_size
    contexts = grid_contexts(shape)
    top = max(contexts)
    nb = -(-top // bs)
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(top, hkv, d, generator=gen).to(dtype)
    v = torch.randn(top, hkv, d, generator=gen).to(dtype)
    bt = torch.arange(nb, dtype=torch.int32)[None]
    vllm_isa = _get_attn_isa(dtype, bs, d, shape.kv_cache_dtype)
    native_isa = cpu_attn_native_isa(d)
    if vllm_isa == "amx":
        # Linux hands out AMX tile state on request only; the worker's first
        # AMX kernel may not have run yet.
        torch.cpu._init_amx()
    caches = {}
    for isa in {vllm_isa, native_isa}:
        kv = torch.zeros(nb, hkv, bs, 2 * d, dtype=dtype)
        kc, vc = kv.view(nb, hkv, 2 * bs, d).chunk(2, dim=2)
        ops.cpu_attn_reshape_and_cache(k, v, kc, vc, torch.arange(top), isa)
        caches[isa] = (kv, kc, vc)
    key_cache, value_cache = cpu_attn_kv_views(caches[native_isa][0], native_isa)
    _, kc, vc = caches[vllm_isa]
    times: dict = {"vllm": {}, "medha": {}}
    for ctx in contexts:
        sl = torch.tensor([ctx], dtype=torch.int32)
        for c in MEASURE_CHUNKS:
            q = torch.randn(c, hq, d, generator=gen).to(dtype)
            out = torch.empty_like(q)
            qsl = torch.tensor([0, c], dtype=torch.int32)
            md = ops.cpu_attn_get_scheduler_metadata(1, hq, hkv, d, sl, dtype, qsl, True, -1, vllm_isa, True)
            meta = ShardMetadata(qsl, bt, sl, True, torch.arange(ctx - c, ctx), torch.tensor([0]))

            def vllm_op():
                ops.cpu_attention_with_kv_cache(q, kc, vc, out, qsl, sl, d**-0.5, True, None, -1, bt, 0.0, md,
                                                None)

            def medha_op():
                shard_attention_native(q, key_cache, value_cache, meta, d**-0.5, out=out)

            for name, f in (("vllm", vllm_op), ("medha", medha_op)):
                t = time.perf_counter()
                f()
                n = max(1, int(0.01 / max(time.perf_counter() - t, 1e-6)))
                best = math.inf
                for _ in range(repeats):
                    t = time.perf_counter()
                    for _ in range(n):
                        f()
                    best = min(best, (time.perf_counter() - t) / n)
                times[name][(ctx, c)] = best
    return times


def measured_cached(shape: AttentionShape) -> Callable[[], dict]:
    """``measure(shape)``, read from / written to the per-host verdict cache."""

    def get() -> dict:
        path = _choice_path(shape)
        try:
            raw = json.loads(path.read_text())
            return {name: {(int(ctx), int(c)): t for ctx, c, t in rows} for name, rows in raw["times"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        times = measure(shape)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        rows = {name: [[ctx, c, t] for (ctx, c), t in per.items()] for name, per in times.items()}
        tmp.write_text(json.dumps({"shape": asdict(shape), "times": rows}, indent=1))
        os.replace(tmp, path)
        return times

    return get
