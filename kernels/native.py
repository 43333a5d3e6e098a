"""The native CPU shard-attention kernel (``csrc/shard_attn.cpp``): build, load, call.

The kernel reads vLLM's CPU_ATTN cache (ISA ``vec``/``vec16``: K transposed
per block, V token-major) IN PLACE and splits each sequence's KV range into
contiguous runs of blocks, one work item per run against all query rows of
the chunk (GQA folded), merged exactly by log-sum-exp. Its cost per query
token does not depend on the chunk size the way a kernel that tiles the
queries does (see benchmarks/bench_attention.py).

Build: the first use compiles the source with the host's g++ for the host's
ISA (``-march=native``: AVX-512 or AVX2 vectors) into the medha cache folder
(``$MEDHA_CACHE_DIR`` or ``~/.cache/medha-vllm``), keyed by the source and
the CPU's flags, and links torch's own OpenMP runtime, so the kernel's
threads are the ones vLLM pinned. ``make setup`` builds it ahead of time.
No compiler, no build: ``available()`` is False with the reason in
``unavailable_reason()`` and callers use the torch kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .metadata import ShardMetadata, check_attention_args

_SRC = Path(__file__).with_name("csrc") / "shard_attn.cpp"
_lib: ctypes.CDLL | None = None
_error: str | None = None
_vector_width = 0  # floats per vector of the loaded build
DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def host_isa() -> str:
    """The vector ISA the kernel is built for on this host."""
    flags = _cpu_flags().split()
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "generic"


def _cache_dir() -> Path:
    root = os.environ.get("MEDHA_CACHE_DIR") or Path.home() / ".cache" / "medha-vllm"
    return Path(root) / "kernels"


def library_path() -> Path:
    key = hashlib.sha256(_SRC.read_bytes() + _cpu_flags().encode() + torch.__version__.encode()).hexdigest()[:16]
    return _cache_dir() / f"shard_attn-{host_isa()}-{key}.so"


def build(verbose: bool = False) -> Path:
    """Compile the kernel for this host (no-op when the cached library exists)."""
    out = library_path()
    if out.exists():
        return out
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found to build the native attention kernel")
    torch_lib = Path(torch.__file__).parent / "lib"
    gomp = torch_lib / "libgomp.so.1"
    omp_link = [str(gomp), f"-Wl,-rpath,{torch_lib}"] if gomp.exists() else ["-fopenmp"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        cmd = [cxx, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17",
               str(_SRC), "-o", str(tmp_out), *omp_link]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"building the native attention kernel failed:\n{' '.join(cmd)}\n{res.stderr[-2000:]}")
        if verbose:
            print(" ".join(cmd))
        os.replace(tmp_out, out)  # atomic: concurrent builders never see a partial file
    return out


def _load() -> ctypes.CDLL | None:
    global _lib, _error, _vector_width
    if _lib is not None or _error is not None:
        return _lib
    try:
        lib = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as e:
        _error = str(e)
        return None
    f = lib.medha_shard_attention
    i64, i32, p = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    f.argtypes = [p, i64, i64, p, i64, i64, i64, p, i64, i64, i64, p, i64, i64, p, i64,
                  p, p, p, i64, p, p, i32, i32, i32, i32, i32, i32, ctypes.c_float, i32, i32]
    f.restype = i32
    _vector_width = int(lib.medha_vector_width())
    _lib = lib
    return _lib


def available() -> bool:
    return _load() is not None


def unavailable_reason() -> str | None:
    _load()
    return _error


def vector_width() -> int:
    _load()
    return _vector_width


def supports(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> str | None:
    """None when the native kernel serves these tensors, else why not."""
    if query.device.type != "cpu":
        return "not a CPU tensor"
    if query.dtype not in DTYPES:
        return f"dtype {query.dtype} (native kernel: float32, bfloat16)"
    if key_cache.stride(1) != 1 or value_cache.stride(3) != 1:
        return "KV layout is not vLLM's CPU layout (K token stride 1, V element stride 1)"
    if query.stride(2) != 1:
        return "query head_size stride is not 1"
    d, bs = query.shape[2], key_cache.shape[1]
    if d not in (32, 64, 96, 128, 256):
        return f"head_size {d} (native kernel: 32, 64, 96, 128, 256)"
    if not available():
        return f"native kernel unavailable: {unavailable_reason()}"
    if bs % (2 * vector_width()):
        return f"block_size {bs} is not a multiple of twice the vector width ({2 * vector_width()})"
    return None


def shard_attention_native(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: ShardMetadata,
    scale: float | None = None,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    num_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.shard_attention_reference``, on vLLM's CPU cache layout.

    key_cache/value_cache: the logical ``[num_blocks, block_size, num_kv_heads,
    head_size]`` views of ``kv_layout.cpu_attn_kv_views`` (K token stride 1).
    ``out`` ([num_tokens, num_q_heads, head_size], query dtype, head_size
    stride 1) and ``lse`` ([num_q_heads, num_tokens] float32 contiguous) may
    be given to write in place. Raises ValueError when ``supports`` refuses.
    """
    hq, hkv, d, bs = check_attention_args(query, key_cache, value_cache)
    why = supports(query, key_cache, value_cache)
    if why is not None:
        raise ValueError(f"native shard attention cannot serve this call: {why}")
    scale = d**-0.5 if scale is None else scale
    n = query.shape[0]
    if out is None:
        out = torch.empty(n, hq, d, dtype=query.dtype)
    if lse is None:
        lse = torch.empty(hq, n, dtype=torch.float32)
    if out.stride(2) != 1 or not lse.is_contiguous():
        raise ValueError("out needs head_size stride 1 and lse must be contiguous")
    qsl = meta.query_start_loc.to(torch.int32).contiguous()
    kv_lens = meta.kv_lens.to(torch.int32).contiguous()
    bt = meta.block_table.to(torch.int32)
    if bt.stride(1) != 1:
        bt = bt.contiguous()
    if meta.causal:
        q_pos = meta.query_positions.to(torch.int64).contiguous()
        sstart = meta.shard_start.to(torch.int64).contiguous()
        q_pos_p, sstart_p = q_pos.data_ptr(), sstart.data_ptr()
    else:
        q_pos_p = sstart_p = None
    rc = _lib.medha_shard_attention(
        query.data_ptr(), query.stride(0), query.stride(1),
        key_cache.data_ptr(), key_cache.stride(0), key_cache.stride(2), key_cache.stride(3),
        value_cache.data_ptr(), value_cache.stride(0), value_cache.stride(2), value_cache.stride(1),
        out.data_ptr(), out.stride(0), out.stride(1), lse.data_ptr(), n,
        qsl.data_ptr(), kv_lens.data_ptr(), bt.data_ptr(), bt.stride(0), q_pos_p, sstart_p,
        meta.num_seqs, hq, hkv, d, bs, int(meta.causal), float(scale), DTYPES[query.dtype],
        num_threads or torch.get_num_threads(),
    )
    if rc != 0:
        raise ValueError(f"native shard attention refused the call (code {rc})")
    return out, lse
