"""medha-vllm: Medha (arXiv 2409.17264) as a vLLM plugin.

The single entry point is `register()`, declared under `vllm.general_plugins`.
vLLM calls it once in every process (API server, engine core, workers); it is
idempotent, imports lazily and never touches a device.
"""

from __future__ import annotations

__version__ = "0.1.0"

SCHEDULER_CLS = "medha_vllm.scheduler.MedhaScheduler"

_registered = False


def register() -> None:
    """vLLM general-plugin entry point: check the vLLM version, apply patches."""
    global _registered
    if _registered:
        return
    from medha_vllm.compat import check_vllm_version

    check_vllm_version()
    from medha_vllm.patches import apply_all

    apply_all()
    _registered = True
