"""The rank grid of TP x PP x KVP workers.

vLLM lays ranks out as arange(world).reshape(-1, DP, PP, PCP, TP)
(distributed/parallel_state.py, initialize_model_parallel): with KVP as the
outermost factor, rank = kvp * PP * TP + pp * TP + tp, and vLLM already builds
separate TP and PP groups inside each KVP replica. The KVP groups join the
ranks that hold the same (pp, tp) position in every replica.
"""

from __future__ import annotations


def rank_of(kvp: int, pp: int, tp: int, pp_size: int, tp_size: int) -> int:
    return (kvp * pp_size + pp) * tp_size + tp


def coords_of(rank: int, pp_size: int, tp_size: int) -> tuple[int, int, int]:
    """(kvp, pp, tp) of a global rank."""
    kvp, rest = divmod(rank, pp_size * tp_size)
    pp, tp = divmod(rest, tp_size)
    return kvp, pp, tp


def kvp_groups(tp_size: int, pp_size: int, kvp_size: int) -> list[list[int]]:
    """Ranks of each KVP group (the transpose of reshape(KVP, PP * TP)), one
    group per (pp, tp) position, ranks in KVP order (the merge order)."""
    per = pp_size * tp_size
    return [[k * per + i for k in range(kvp_size)] for i in range(per)]


def tp_groups(tp_size: int, pp_size: int, kvp_size: int) -> list[list[int]]:
    world = tp_size * pp_size * kvp_size
    return [list(range(s, s + tp_size)) for s in range(0, world, tp_size)]


def pp_groups(tp_size: int, pp_size: int, kvp_size: int) -> list[list[int]]:
    return [[rank_of(k, p, t, pp_size, tp_size) for p in range(pp_size)]
            for k in range(kvp_size) for t in range(tp_size)]
