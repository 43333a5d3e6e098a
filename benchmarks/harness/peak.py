"""The host's float32 FMA peak, measured (``fma_peak.c``, built with the host's
g++ for its ISA): the ceiling any exact float32 kernel meets on this host."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from pathlib import Path

_SRC = Path(__file__).with_name("fma_peak.c")


def fma_peak_flops(threads: int, seconds: float = 0.5, repeats: int = 3) -> float:
    """Best of ``repeats`` float32 FLOP/s with ``threads`` threads (~``seconds`` each)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler to measure the FMA peak")
    with tempfile.TemporaryDirectory() as tmp:
        lib_path = Path(tmp) / "fma_peak.so"
        subprocess.run([cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(_SRC), "-o", str(lib_path)],
                       check=True, capture_output=True)
        lib = ctypes.CDLL(str(lib_path))
        f = lib.medha_fma_peak_flops
        f.argtypes, f.restype = [ctypes.c_int, ctypes.c_long], ctypes.c_double
        rate = f(threads, 1_000_000)
        iters = max(1_000_000, int(seconds * rate / (threads * 2 * 16 * 12)))
        return max(f(threads, iters) for _ in range(repeats))


if __name__ == "__main__":
    import os

    n = len(os.sched_getaffinity(0))
    print(f"float32 FMA peak, {n} threads: {fma_peak_flops(n) / 1e9:.1f} GFLOP/s")
