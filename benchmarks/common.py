"""Helpers shared by the benchmarks: machine facts, JSON output, server runs."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        torch_v = torch.__version__
    except Exception:
        gpu, torch_v = None, None
    import vllm

    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "gpu": gpu,
            "python": sys.version.split()[0], "torch": torch_v, "vllm": vllm.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path
