"""KVPExecutor: vLLM's multiprocessing executor (and its Ray executor, which
builds on it) with KVP x PP x TP workers.

Chosen as `parallel_config.distributed_executor_backend` (a class: vLLM's
documented door, v1/executor/abstract.py `Executor.get_class`) when
`kv_parallel_size` > 1 (kvp/configure.py). It changes three things of
MultiprocExecutor:

- the world: TP x PP x PCP x KVP workers, KVP outermost
  (rank = kvp x PP x TP + pp x TP + tp, ranks.py), so vLLM builds its TP and
  PP groups inside each KVP replica by itself; results come from the last
  rank, as vLLM's output rank rule already says;
- the memory the engine plans with: each worker reports its own KV memory,
  the executor reports G times it, so vLLM's start-up check and the
  scheduler's block pool see the groups' aggregate capacity (G x N blocks);
- the KV cache each worker allocates: N = total // G blocks, its group's share.
"""

from __future__ import annotations

import copy

from vllm.logger import init_logger
from vllm.v1.executor.multiproc_executor import MultiprocExecutor

logger = init_logger(f"vllm.{__name__}")


def kvp_size(vllm_config) -> int:
    from medha_vllm.config import MedhaConfig

    return MedhaConfig.from_vllm_config(vllm_config).kv_parallel_size


def world_with_kvp(parallel_config, kvp: int) -> int:
    pc = parallel_config
    return pc.tensor_parallel_size * pc.pipeline_parallel_size * \
        pc.prefill_context_parallel_size * kvp


def shrink_to_group(config, groups: int):
    """A worker's share of a KV-cache config planned for G groups' memory:
    N = num_blocks // G blocks, tensors sized to match."""
    total = config.num_blocks
    n = total // groups
    out = copy.deepcopy(config)
    out.num_blocks = n
    for t in out.kv_cache_tensors:
        assert t.size % total == 0, (t.size, total)
        t.size = t.size // total * n
        if t.layer_stride == t.block_stride * total:
            # Layer-outermost: each layer's region is num_blocks pages long.
            assert t.offset % total == 0, (t.offset, total)
            t.layer_stride = t.block_stride * n
            t.offset = t.offset // total * n
        # Block-outermost: a block packs every layer's page; only the size changes.
    return out


class KVPExecutorMixin:
    """The three changes, on top of any MultiprocExecutor-based executor."""

    def _init_executor(self) -> None:
        self.kvp = kvp_size(self.vllm_config)
        # NOTE(medha): re-asserted here: a replace() of the parallel config
        # re-runs its __post_init__, which resets world_size to TP x PP x PCP.
        self.parallel_config.world_size = world_with_kvp(self.parallel_config, self.kvp)
        super()._init_executor()

    def _get_parallel_sizes(self) -> tuple[int, int, int]:
        tp, pp, pcp = super()._get_parallel_sizes()
        # vLLM asserts world = TP x PP x PCP; KVP is the outer factor.
        return tp, pp, pcp * self.kvp

    def determine_available_memory(self) -> list[int]:
        return [m * self.kvp for m in super().determine_available_memory()]

    def initialize_from_config(self, kv_cache_configs) -> None:
        shrunk = [shrink_to_group(c, self.kvp) for c in kv_cache_configs]
        logger.info("Medha KVP: %d groups of %d KV blocks each (the scheduler sees %d)",
                    self.kvp, shrunk[0].num_blocks, kv_cache_configs[0].num_blocks)
        super().initialize_from_config(shrunk)


class KVPExecutor(KVPExecutorMixin, MultiprocExecutor):
    """KVP on vLLM's multiprocessing executor (one machine)."""


def ray_executor_cls() -> type:
    """KVP on vLLM's Ray executor (RayExecutorV2, itself a MultiprocExecutor:
    workers are Ray actors placed by a placement group of world-size
    bundles, so KVP groups can live on different nodes). Built on first use:
    importing it imports ray."""
    global KVPRayExecutor
    if "KVPRayExecutor" not in globals():
        from vllm.v1.executor.ray_executor_v2 import RayExecutorV2

        class KVPRayExecutor(KVPExecutorMixin, RayExecutorV2):  # type: ignore[no-redef]
            pass

        KVPRayExecutor.__module__ = __name__
        globals()["KVPRayExecutor"] = KVPRayExecutor
    return globals()["KVPRayExecutor"]


def __getattr__(name: str):
    # Unpickling the class by reference (the config travels to the engine core).
    if name == "KVPRayExecutor":
        return ray_executor_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
