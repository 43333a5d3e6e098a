"""Parallel layout checks and CPU worker placement (pure Python, no vllm import).

A pipeline of p stages splits the model's hidden layers into p contiguous
groups, one per stage (vLLM's `get_pp_indices`, optionally overridden by the
VLLM_PP_LAYER_PARTITION environment variable). A layout is impossible when a
stage would get no layer or the explicit partition does not describe the
model; vLLM itself computes the split only inside the workers, after they have
started (a bad partition raises there; more stages than layers leaves stages
without layers).
"""

from __future__ import annotations

import os


class LayoutError(ValueError):
    """An impossible parallel layout; the message names the setting and the fix."""


def check_pipeline_layout(num_layers: int, pp: int, partition: str | None = None) -> list[int]:
    """Return the layers per stage, or raise LayoutError naming the problem."""
    if pp < 1:
        raise LayoutError(f"pipeline_parallel_size (-pp) must be >= 1, got {pp}")
    if partition:
        try:
            parts = [int(x) for x in partition.split(",")]
        except ValueError:
            raise LayoutError(
                f"VLLM_PP_LAYER_PARTITION={partition!r} is not a comma-separated list of "
                "layer counts") from None
        if len(parts) != pp:
            raise LayoutError(
                f"VLLM_PP_LAYER_PARTITION={partition!r} lists {len(parts)} stages but "
                f"pipeline_parallel_size (-pp) is {pp}")
        if sum(parts) != num_layers:
            raise LayoutError(
                f"VLLM_PP_LAYER_PARTITION={partition!r} assigns {sum(parts)} layers but the "
                f"model has {num_layers} hidden layers")
        if min(parts) < 1:
            raise LayoutError(
                f"VLLM_PP_LAYER_PARTITION={partition!r} leaves a pipeline stage without "
                "layers; every stage needs at least one")
        return parts
    if pp > num_layers:
        raise LayoutError(
            f"pipeline_parallel_size (-pp) = {pp} needs at least {pp} hidden layers, but the "
            f"model has {num_layers}: every stage must hold at least one layer "
            f"(use -pp {num_layers} or fewer)")
    base = num_layers // pp
    parts = [base] * pp
    for i in range(2, num_layers % pp + 2):  # vLLM's rule: spare layers skip the last stage
        parts[-i] += 1
    return parts


def cpu_thread_binding(workers: int, cores: list[int] | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND value giving each of `workers` local workers
    its own contiguous share of the allowed cores ("0|1" for 2 workers on 2
    cores, "0-3|4-7" on 8). With fewer cores than workers, cores are shared."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if workers <= len(cores):
        per = len(cores) // workers
        groups = [cores[i * per:(i + 1) * per] for i in range(workers)]
    else:
        groups = [[cores[i % len(cores)]] for i in range(workers)]
    return "|".join(_span(g) for g in groups)


def _span(group: list[int]) -> str:
    if len(group) > 1 and group == list(range(group[0], group[-1] + 1)):
        return f"{group[0]}-{group[-1]}"
    return ",".join(str(c) for c in group)
