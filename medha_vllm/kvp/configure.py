"""Start-up wiring of KV-cache parallelism into a VllmConfig (api process).

Called from the `parallel_layout` patch right after vLLM has built the
engine config. With `kv_parallel_size` = 1 it does nothing. With G > 1 it
checks the layout and refuses, naming the setting, what cannot run; then it
selects Medha's executor and worker classes through vLLM's own config fields
(`distributed_executor_backend` takes an Executor class, `worker_cls` a
dotted name), turns prefix caching off (one INFO line: KVP places blocks by
token position, and copy-on-write of shared blocks is not covered), and
counts `--num-gpu-blocks-override` per worker, as vLLM does without KVP.
Returns G, so the caller can place G x TP x PP workers on this node.
"""

from __future__ import annotations

from vllm.logger import init_logger

from medha_vllm.config import MedhaConfig, MedhaConfigError

logger = init_logger(f"vllm.{__name__}")

WORKER_CLS = "medha_vllm.kvp.worker.KVPWorker"


def configure(vllm_config) -> int:
    extra = getattr(vllm_config, "additional_config", None) or {}
    if not isinstance(extra, dict) or "medha" not in extra:
        return 1
    cfg = MedhaConfig.from_vllm_config(vllm_config)
    groups = cfg.kv_parallel_size
    if groups == 1:
        if cfg.kvp_max_tokens_per_group is not None:
            raise MedhaConfigError("medha option 'kvp_max_tokens_per_group' needs "
                                   "'kv_parallel_size' (--medha-kv-parallel-size) > 1")
        return 1
    from vllm.platforms import current_platform

    from medha_vllm import is_medha_scheduler

    pc, cc, mc = vllm_config.parallel_config, vllm_config.cache_config, vllm_config.model_config
    problems = []
    if not is_medha_scheduler(getattr(vllm_config.scheduler_config, "scheduler_cls", None)):
        problems.append("it needs --scheduler medha")
    if not current_platform.is_cpu():
        problems.append(f"it runs on CPU workers only so far (this platform: "
                        f"{current_platform.device_name})")
    if cfg.attention_backend == "vllm":
        problems.append("it needs Medha's attention backend, which returns each shard's "
                        "log-sum-exp (--medha-attention-backend vllm was given)")
    backend = pc.distributed_executor_backend
    if backend not in (None, "mp", "uni", "ray") and not isinstance(backend, type):
        problems.append(f"--distributed-executor-backend {backend} is not supported with it "
                        "(use the default multiprocessing executor, or ray)")
    if pc.data_parallel_size > 1:
        problems.append("data parallelism (-dp) is not supported with it")
    if pc.prefill_context_parallel_size > 1 or pc.decode_context_parallel_size > 1:
        problems.append("prefill/decode context parallelism is not supported with it")
    if vllm_config.speculative_config is not None:
        problems.append("speculative decoding is not supported with it")
    if vllm_config.kv_transfer_config is not None:
        problems.append("KV connectors are not supported with it")
    if pc.worker_cls not in ("auto", WORKER_CLS) and not pc.worker_cls.endswith("CPUWorker"):
        problems.append(f"a custom --worker-cls ({pc.worker_cls}) is set")
    if mc is not None and mc.is_hybrid:
        problems.append("the model mixes attention types (one full-attention KV cache needed)")
    if backend != "ray":
        why = placement_problem(groups * pc.tensor_parallel_size * pc.pipeline_parallel_size,
                                cc.kv_cache_memory_bytes, _weights_bytes(mc), _available_bytes())
        if why:
            problems.append(why)
    if problems:
        raise MedhaConfigError(f"--medha-kv-parallel-size {groups}: " + "; ".join(problems))
    from medha_vllm.kvp.executor import KVPExecutorMixin

    if isinstance(backend, type) and not issubclass(backend, KVPExecutorMixin):
        raise MedhaConfigError(f"--medha-kv-parallel-size {groups}: a custom executor "
                               f"({backend.__name__}) is set")
    if backend == "ray":
        from medha_vllm.kvp.executor import ray_executor_cls

        pc.distributed_executor_backend = ray_executor_cls()
    elif not isinstance(backend, type):
        from medha_vllm.kvp.executor import KVPExecutor

        pc.distributed_executor_backend = KVPExecutor
    pc.worker_cls = WORKER_CLS
    if cc.enable_prefix_caching:
        cc.enable_prefix_caching = False
        logger.info("Medha KVP: prefix caching is off with KV-cache parallelism (blocks are "
                    "placed by token position in their group)")
    if cc.num_gpu_blocks_override is not None and not getattr(cc, "_medha_kvp_scaled", False):
        # Per worker, as without KVP; the scheduler's pool holds every group's.
        cc.num_gpu_blocks_override *= groups
        cc._medha_kvp_scaled = True
    logger.info("Medha KVP: %d KV-cache parallel groups x TP %d x PP %d = %d workers", groups,
                pc.tensor_parallel_size, pc.pipeline_parallel_size,
                groups * pc.tensor_parallel_size * pc.pipeline_parallel_size)
    return groups


def placement_problem(workers: int, kv_bytes: int | None, weights_bytes: int | None,
                      available: int | None) -> str | None:
    """Why this machine cannot hold `workers` CPU workers, each with its KV
    cache and a full copy of the weights (None: it can, or nothing is known)."""
    if not kv_bytes or not available:
        return None
    need = workers * (kv_bytes + (weights_bytes or 0))
    if need <= available:
        return None
    gib = 1 << 30
    return (f"its {workers} workers need about {need / gib:.1f} GiB on this machine (each "
            f"{kv_bytes / gib:.1f} GiB of KV cache, VLLM_CPU_KVCACHE_SPACE or "
            f"--kv-cache-memory-bytes, plus {(weights_bytes or 0) / gib:.1f} GiB of weights) but "
            f"{available / gib:.1f} GiB are available: lower the KV cache per worker or the "
            f"parallel sizes, or spread the workers over a Ray cluster "
            f"(--distributed-executor-backend ray)")


def _weights_bytes(model_config) -> int | None:
    """Size of the model's weight files when the model is a local folder."""
    import glob
    import os

    path = getattr(model_config, "model", None)
    if not path or not os.path.isdir(path):
        return None
    files = glob.glob(os.path.join(path, "*.safetensors")) or glob.glob(os.path.join(path, "*.bin"))
    return sum(os.path.getsize(f) for f in files) or None


def _available_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no estimate, no refusal
        return None
