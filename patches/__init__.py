"""Runtime patches of vLLM internals (installed as `medha_vllm.patches`).

Every patch module opens with a header (target, process, vLLM versions
verified, why, how, upstream, "Remove when") and exports `SPEC` (a PatchSpec)
plus an idempotent `apply()`. `apply_all()` is called by the plugin entry point
in every vLLM process. tests/unit/test_patches.py walks this registry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# Module names (relative to this package) of every patch, in apply order.
PATCH_MODULES = ("cli_args",)


@dataclass(frozen=True)
class PatchSpec:
    # Dotted path of the vLLM symbol that is rebound.
    target: str
    # Processes where it matters: "api", "engine", "worker".
    processes: tuple[str, ...]
    # vLLM versions it was verified against.
    verified: tuple[str, ...]
    # One line: what it does.
    summary: str


def iter_patches():
    for name in PATCH_MODULES:
        yield importlib.import_module(f"{__name__}.{name}")


def apply_all() -> list[str]:
    applied = []
    for mod in iter_patches():
        if mod.apply():
            applied.append(mod.__name__)
    return applied
