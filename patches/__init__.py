"""Runtime patches of vLLM internals (installed as `medha_vllm.patches`).

Every patch module opens with a header (target, process, vLLM versions
verified, why, how, upstream, "Remove when") and exports `SPEC` (a PatchSpec:
targets, import sites, upstream reference, removal condition, feature probe,
what it does without Medha) plus an idempotent `apply()` that says what it did
(a PatchResult: applied / already / retired / not needed). `apply_all()` is
called by the plugin entry point in every vLLM process.
tests/unit/test_patches.py walks this registry.
"""

from __future__ import annotations

import enum
import importlib
import importlib.abc
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Callable

# NOTE(medha): plain logging here (vLLM's logger would import vllm when this
# package is imported); under "vllm." so vLLM's logging config shows it.
logger = logging.getLogger("vllm.medha_vllm.patches")

# Module names (relative to this package) of every patch, in apply order.
# stage_timeline must precede cpu_pp (cpu_pp wraps the method stage_timeline
# wraps on the parent class).
PATCH_MODULES = ("cli_args", "parallel_layout", "stage_timeline", "cpu_pp", "ray_cpu",
                 "attention_backend", "profile_before_ready", "engine_death_exit",
                 "cpu_async_scheduling")


class PatchResult(str, enum.Enum):
    """What `apply()` did."""

    APPLIED = "applied"        # rebound now, or post-import hooks installed that rebind
    ALREADY = "already"        # applied earlier in this process: nothing done
    RETIRED = "retired"        # the probe found upstream fixed: nothing rebound
    NOT_NEEDED = "not needed"  # not this platform, or an optional dependency is missing


@dataclass(frozen=True)
class PatchSpec:
    # Short name (the module name).
    name: str
    # Dotted paths of every vLLM symbol the patch rebinds.
    targets: tuple[str, ...]
    # Other places holding a target by value (`from m import X` copies) that
    # are rebound too; () when every caller looks the target up at call time.
    import_sites: tuple[str, ...]
    # Processes where it matters: "api", "engine", "worker".
    processes: tuple[str, ...]
    # vLLM versions it was verified against.
    verified: tuple[str, ...]
    # One line: what it does.
    summary: str
    # Upstream issue / PR, or why none.
    upstream: str
    # The condition under which the patch can be deleted.
    remove_when: str
    # Feature probe: True once vLLM no longer needs the patch (then apply()
    # retires it); None when there is nothing to probe (remove_when says why).
    probe: Callable[[], bool] | None
    # What it does when Medha is not selected ("nothing: pass-through", or
    # the behaviour plain vLLM gets too).
    without_medha: str


_results: dict[str, PatchResult] = {}
# Dotted target path -> the object the patch bound there.
_replacements: dict[str, object] = {}
_lock = threading.RLock()


def iter_patches():
    for name in PATCH_MODULES:
        yield importlib.import_module(f"{__name__}.{name}")


def apply_all() -> dict[str, PatchResult]:
    return {mod.SPEC.name: mod.apply() for mod in iter_patches()}


def apply_patch(spec: PatchSpec, install: Callable[[], PatchResult]) -> PatchResult:
    """Run `install` once per process. Patches that rebind at once check
    `retired(spec)` first; post-import hooks check it when they fire."""
    with _lock:
        if spec.name in _results:
            return PatchResult.ALREADY
        result = install()
        return _results.setdefault(spec.name, result)


def retired(spec: PatchSpec) -> bool:
    """True (and the patch marked retired, with one log line) if its probe
    says vLLM does not need it any more."""
    if spec.probe is None or not spec.probe():
        return False
    with _lock:
        if _results.get(spec.name) != PatchResult.RETIRED:
            logger.info("medha: patch %s retired (%s)", spec.name, spec.remove_when)
        _results[spec.name] = PatchResult.RETIRED
    return True


def result_of(name: str) -> PatchResult | None:
    return _results.get(name)


def bind(owner: object, attr: str, value: object, target: str) -> None:
    """setattr(owner, attr, value), remembering `value` as target's replacement."""
    setattr(owner, attr, value)
    _replacements[target] = value


def record(target: str, value: object) -> None:
    """Remember `value` as target's replacement, for a patch that goes
    through a vLLM registration API instead of setattr."""
    _replacements[target] = value


def replacement(target: str) -> object | None:
    return _replacements.get(target)


def resolve(dotted: str) -> object:
    """The object at a dotted path (module, then attributes)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(dotted)


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
