"""`--distributed-executor-backend ray` on CPU (patch medha_vllm.patches.ray_cpu).

Unit tests: what the patch changes in vLLM's Ray executor on the CPU platform.
End to end: `LLM(..., pipeline_parallel_size=2, distributed_executor_backend="ray")`
on a one-node Ray cluster started on loopback, Medha's scheduler, float32, greedy,
one prompt long enough to be prefilled in chunks. Token ids must equal those of
plain vLLM (its own scheduler, a single worker, no Ray), log-probabilities must
agree to 1e-4, the Ray engine must report that it ran MedhaScheduler and chunked,
and each worker that it is a Ray actor with the medha patches in effect.

Skipped only when ray is not installed (`make test` installs it); with ray
installed, any failure fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

LOGPROB_ATOL = 1e-4
RUN = Path(__file__).with_name("ray_pp_run.py")

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (scripts/setup.sh installs it with the `test` extra)")
pytestmark = [needs_ray]


@pytest.fixture()
def patched():
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the ray_cpu patch applies to the CPU platform only")
    import medha_vllm.patches.ray_cpu as p

    p.apply()
    from vllm.v1.executor import ray_executor_v2  # noqa: F401  (runs the import hook)

    return p


def test_cpu_platform_declares_ray_device_key(patched):
    from vllm.platforms import current_platform
    from vllm.platforms.cpu import CpuPlatform

    assert current_platform.ray_device_key == CpuPlatform.ray_device_key == "CPU"
    assert patched._ORIG["ray_device_key"] == ""  # what vLLM 0.32 declares


def test_actor_options_use_builtin_cpu_not_a_custom_resource(patched):
    """The original options are rejected by Ray itself; the patched ones pass
    Ray's own option validation (no cluster needed for that)."""
    import ray

    from vllm.v1.executor.ray_executor_v2 import RayExecutorV2

    class Probe:
        pass

    actor_cls = ray.remote(Probe)
    orig = patched._ORIG["_get_actor_resource_kwargs"].__func__()
    assert orig["resources"] == {"CPU": 1.0}  # vLLM's request: a custom "CPU"
    with pytest.raises(ValueError, match="num_cpus"):
        actor_cls.options(num_cpus=0, **orig)
    kwargs = RayExecutorV2._get_actor_resource_kwargs()
    assert "resources" not in kwargs and "num_cpus" not in kwargs
    actor_cls.options(num_cpus=0, **kwargs)  # as RayExecutorV2._init_executor calls it


def test_actor_options_unchanged_off_cpu(patched, monkeypatch):
    from vllm.platforms import current_platform
    from vllm.v1.executor.ray_executor_v2 import RayExecutorV2

    monkeypatch.setattr(type(current_platform), "is_cpu", classmethod(lambda cls: False))
    monkeypatch.setattr(current_platform, "ray_device_key", "GPU", raising=False)
    assert RayExecutorV2._get_actor_resource_kwargs() == {"num_gpus": 1.0}


def test_worker_class_is_pickled_by_reference(patched):
    """Ray ships the actor class by reference (module + name): each actor imports
    this module and gets the CPU subclass (the e2e test checks it in the actors)."""
    import pickle

    import ray.cloudpickle as cloudpickle

    import medha_vllm.patches.ray_cpu as module
    from vllm.v1.executor import ray_executor_v2

    cls = ray_executor_v2.RayWorkerProc
    assert cls.__name__ == "CpuRayWorkerProc"
    assert issubclass(cls, patched._ORIG["RayWorkerProc"])
    assert module.CpuRayWorkerProc is cls
    data = cloudpickle.dumps(cls)
    assert b"medha_vllm.patches.ray_cpu" in data and len(data) < 200
    assert pickle.loads(data) is cls


def test_worker_thread_binding_follows_vllm_cpu_omp_threads_bind(patched, monkeypatch):
    import threading

    import torch

    from vllm.config import ParallelConfig, VllmConfig

    config = VllmConfig(parallel_config=ParallelConfig(pipeline_parallel_size=2))
    cpus = sorted(os.sched_getaffinity(0))
    a, b = cpus[0], cpus[-1]

    def bind_in_a_thread(value: str) -> dict:
        """The binding is per thread: run it in one of its own (not pytest's)."""
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", value)
        threads = torch.get_num_threads()
        seen = {}

        def worker():
            seen["cores"] = patched.bind_worker_threads(config, 1)
            seen["affinity"] = sorted(os.sched_getaffinity(0))
            seen["threads"] = torch.get_num_threads()

        try:
            t = threading.Thread(target=worker)
            t.start()
            t.join()
        finally:
            torch.set_num_threads(threads)
        return seen

    assert bind_in_a_thread(f"{a}|{b}") == {"cores": [b], "affinity": [b], "threads": 1}
    # nobind, and cores this process may not use: left as Ray started the worker.
    for value in ("nobind", f"{a}|{b + 4096}"):
        seen = bind_in_a_thread(value)
        assert seen["cores"] is None and seen["affinity"] == cpus, value


def test_worker_response_queue_leaves_no_shm_name_behind(patched):
    """What CpuRayWorkerProc.run does to its response queue's ring once the
    executor attached: the name goes, both mappings keep working."""
    import types

    from vllm.distributed.device_communicators.shm_broadcast import ShmRingBuffer

    ring = ShmRingBuffer(1, 4096, 2)  # as the worker creates it
    name = ring.shared_memory.name
    reader = ShmRingBuffer(*ring.handle())  # as the executor attaches to it
    assert os.path.exists(f"/dev/shm/{name}")
    assert patched.release_shm_name(types.SimpleNamespace(buffer=ring))
    assert not os.path.exists(f"/dev/shm/{name}")
    ring.shared_memory.buf[0] = 7
    assert reader.shared_memory.buf[0] == 7
    assert not patched.release_shm_name(types.SimpleNamespace(buffer=ring))  # once
    assert not patched.release_shm_name(types.SimpleNamespace(buffer=None))  # remote
    del ring, reader  # no second unlink (it would raise in __del__)


def test_legacy_ray_executor_fails_with_a_clear_message(patched):
    if not patched.legacy_executor_exists():
        pytest.skip("this vLLM has no legacy Ray executor (0.33 removed it)")
    from vllm.v1.executor.ray_executor import RayDistributedExecutor

    with pytest.raises(NotImplementedError, match="VLLM_USE_RAY_V2_EXECUTOR_BACKEND"):
        RayDistributedExecutor._init_executor(object.__new__(RayDistributedExecutor))


# ----------------------------------------------------------------- end to end

def _run(model: str, mode: str, env: dict, log: Path) -> subprocess.Popen:
    # A session of its own: the engine, its workers and the Ray processes the script
    # starts can be ended together (os.killpg) if the script does not finish.
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, str(RUN), model, mode], env=env,
                                text=True, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True)


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind
    except (ProcessLookupError, PermissionError):
        pass


def _result(proc: subprocess.Popen, log: Path, timeout: float) -> dict:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end(proc)
        pytest.fail(f"{RUN.name} timed out; log:\n{log.read_text()[-4000:]}")
    assert proc.returncode == 0, f"{RUN.name} failed:\n{log.read_text()[-6000:]}"
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    assert line, f"no RESULT line; stdout:\n{out[-2000:]}\nlog:\n{log.read_text()[-4000:]}"
    return json.loads(line[len("RESULT "):])


@pytest.mark.e2e
@pytest.mark.cpu
def test_ray_pipeline_parallel_2_matches_single_worker(synthetic_path, tmp_path):
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("CPU test (the ray_cpu patch is a no-op on other platforms)")
    cpus = sorted(os.sched_getaffinity(0))
    a, b = cpus[0], cpus[1] if len(cpus) > 1 else cpus[0]
    base = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    base.pop("RAY_ADDRESS", None)  # the script starts its own cluster
    # Ray's session folder (logs, sockets): short path (unix socket names are
    # limited to 107 bytes), removed afterwards.
    ray_tmp = tempfile.mkdtemp(prefix="medha-ray-", dir="/tmp")
    procs: list[subprocess.Popen] = []
    t0 = time.time()
    try:
        # Both engines at once (start-up is mostly imports, one core each).
        procs.append(_run(synthetic_path, "ray",
                          {**base, "VLLM_CPU_OMP_THREADS_BIND": f"{a}|{b}",
                           "MEDHA_RAY_TMPDIR": ray_tmp}, tmp_path / "ray.log"))
        procs.append(_run(synthetic_path, "single",
                          {**base, "VLLM_CPU_OMP_THREADS_BIND": f"{a}"},
                          tmp_path / "single.log"))
        single = _result(procs[1], tmp_path / "single.log", 420 - (time.time() - t0))
        ray_run = _result(procs[0], tmp_path / "ray.log", 480 - (time.time() - t0))
    finally:
        for proc in procs:
            _end(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    # Each pipeline stage ran in its own Ray actor, with the patches in effect there.
    workers = sorted(ray_run["workers"], key=lambda w: w["rank"])
    assert [w["rank"] for w in workers] == [0, 1]
    assert len({w["pid"] for w in workers}) == 2
    for w, core in zip(workers, (a, b)):
        assert w["actor_id"] and w["actor_name"].endswith(f"_PP{w['rank']}"), w
        assert w["worker_proc_cls"] == "CpuRayWorkerProc", w
        assert w["ray_device_key"] == "CPU" and w["cpu_pp_patched"], w
        assert w["affinity"] == [core], w

    assert single["engine"] == {"scheduler_cls": "vllm.v1.core.sched.scheduler.Scheduler"}
    assert ray_run["engine"]["scheduler_cls"] == "medha_vllm.scheduler.MedhaScheduler"
    # 2,337 prompt tokens, at most 256 scheduled per step.
    assert ray_run["engine"]["medha_chunks"] >= 2337 // 256, ray_run["engine"]
    ref, got = single["outputs"], ray_run["outputs"]
    assert len(ref) == len(got) == 3
    for i, (x, y) in enumerate(zip(ref, got)):
        assert x["tokens"] == y["tokens"], f"prompt {i}: tokens differ"
        assert len(y["logprobs"]) == len(y["tokens"]) > 0
        for lx, ly in zip(x["logprobs"], y["logprobs"]):
            assert abs(lx - ly) <= LOGPROB_ATOL, f"prompt {i}: logprob {lx} vs {ly}"
