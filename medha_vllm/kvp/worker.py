"""KVPWorker: vLLM's CPU worker as one member of a KV-cache parallel group.

Chosen as `parallel_config.worker_cls` when `kv_parallel_size` > 1
(kvp/configure.py). Each worker is a full replica of its (pp, tp) position's
weights; on top of CPUWorker it

- joins the KVP group of its (pp, tp) position after vLLM has built the TP
  and PP groups (`init_device`);
- learns its KV blocks (`initialize_from_config`: N blocks, this group's
  share; the executor shrank the config) and derives the same layout as the
  scheduler (plan.make_plan);
- rewrites each step's block ids to its own cache before vLLM's model runner
  builds block tables and slot mappings (`execute_model`).

The attention backend then attends over this group's token range and merges
the groups' states (runtime.py).
"""

from __future__ import annotations

import torch
from vllm.distributed.parallel_state import get_world_group, init_model_parallel_group
from vllm.logger import init_logger
from vllm.v1.worker.cpu_worker import CPUWorker

from medha_vllm.kvp import runtime
from medha_vllm.kvp.plan import make_plan
from medha_vllm.kvp.ranks import coords_of, kvp_groups
from medha_vllm.metrics import KvpWorkerMetrics

logger = init_logger(f"vllm.{__name__}")


def kvp_options(vllm_config) -> tuple[int, int | None]:
    from medha_vllm.config import MedhaConfig

    cfg = MedhaConfig.from_vllm_config(vllm_config)
    return cfg.kv_parallel_size, cfg.kvp_max_tokens_per_group


def _group_name() -> str:
    """The KVP group's name. NOTE(medha): vLLM's CPU communicator uses its
    shared-memory collectives (an all-gather in ~tens of microseconds) only
    for groups whose name starts with "tp" or "pp", and gloo over TCP (about
    a millisecond an all-gather here) for any other
    (distributed/device_communicators/cpu_communicator.py). When every rank
    runs on this host, the group is named "pp_kvp" to get shared memory;
    across hosts (Ray on several machines) it is "kvp" (gloo)."""
    import socket

    hosts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(hosts, socket.gethostname(),
                                        group=get_world_group().cpu_group)
    return "pp_kvp" if len(set(hosts)) == 1 else "kvp"


def _placement() -> str:
    """Where this worker runs, for the start-up log: its Ray node when it is
    a Ray actor, else its host and pid."""
    import os
    import socket
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            return f" on Ray node {ctx.get_node_id()[:12]} ({ray.util.get_node_ip_address()})"
    return f" on {socket.gethostname()} (pid {os.getpid()})"


class KVPWorker(CPUWorker):
    def init_device(self) -> None:
        super().init_device()
        groups, _ = kvp_options(self.vllm_config)
        pc = self.parallel_config
        tp, pp = pc.tensor_parallel_size, pc.pipeline_parallel_size
        coordinator = init_model_parallel_group(
            kvp_groups(tp, pp, groups), get_world_group().local_rank,
            torch.distributed.get_backend(get_world_group().device_group),
            group_name=_group_name())
        group = coords_of(self.rank, pp, tp)[0]
        runtime.set_runtime(runtime.KvpRuntime(group=group, groups=groups, coordinator=coordinator))
        self._kvp_metrics = KvpWorkerMetrics(self.rank)
        logger.info("Medha KVP: rank %d is KV-cache parallel group %d of %d (pp %d, tp %d)%s",
                    self.rank, group, groups, *coords_of(self.rank, pp, tp)[1:], _placement())

    def initialize_from_config(self, kv_cache_config) -> None:
        rt = runtime.get()
        groups, shard_option = kvp_options(self.vllm_config)
        block_size = kv_cache_config.kv_cache_groups[0].kv_cache_spec.block_size
        rt.plan = make_plan(groups, kv_cache_config.num_blocks, block_size, shard_option,
                            self.model_config.max_model_len)
        super().initialize_from_config(kv_cache_config)
        if rt.group == 0:
            logger.info("Medha KVP: %s", rt.plan.describe())

    def execute_model(self, scheduler_output):
        rt = runtime.get()
        if rt.plan is not None:
            runtime.localize_scheduler_output(scheduler_output, rt.group, rt.plan.blocks_per_group)
        out = super().execute_model(scheduler_output)
        self._kvp_metrics.maybe_flush(rt)
        return out
