"""Runtime patches of vLLM internals (installed as `medha_vllm.patches`).

Every patch module opens with a header (target, process, vLLM versions
verified, why, how, upstream, "Remove when") and exports `SPEC` (a PatchSpec)
plus an idempotent `apply()`. `apply_all()` is called by the plugin entry point
in every vLLM process. tests/unit/test_patches.py walks this registry.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from dataclasses import dataclass
from typing import Callable

# Module names (relative to this package) of every patch, in apply order.
# stage_timeline must precede cpu_pp (cpu_pp wraps the method stage_timeline
# wraps on the parent class).
PATCH_MODULES = ("cli_args", "parallel_layout", "stage_timeline", "cpu_pp", "ray_cpu")


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


# ---------------------------------------------------------------- post-import hooks
# NOTE(medha): worker-side patches target modules (the model runners) that
# take seconds to import and that the API server never needs. Instead of
# importing them in every process, such a patch registers a hook that runs
# right after the module is first imported (at once if it already is).

_hooks: dict[str, list[Callable]] = {}
_hooks_lock = threading.RLock()


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        orig_exec = loader.exec_module

        def exec_module(module, _orig=orig_exec, _name=fullname):
            _orig(module)
            _run_hooks(_name)

        loader.exec_module = exec_module
        return spec


_finder = _PostImportFinder()


def _run_hooks(name: str) -> None:
    with _hooks_lock:
        callbacks = _hooks.pop(name, [])
    for cb in callbacks:
        cb(sys.modules[name])


def when_imported(module_name: str, callback: Callable) -> None:
    """Call callback(module) once module_name is imported (now if it is)."""
    with _hooks_lock:
        if module_name in sys.modules:
            callback(sys.modules[module_name])
            return
        _hooks.setdefault(module_name, []).append(callback)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
