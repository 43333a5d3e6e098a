"""The default iteration budget, derived from the host's profile (pure).

A fixed budget cannot suit every host: on the project's AVX-512 machine a
32-token chunk of the synthetic model at 64K context takes ~0.1 s, on an
AVX2 machine with emulated bfloat16 a 16-token chunk took 0.32 s, twice the
old constant 150 ms, so no chunk fitted and Medha fell back to its smallest.
The rule here: the budget must fit one prefill chunk of ``min_chunk_size``
tokens at the longest context the deployment serves (``derive_target`` can
also fit a chunk of *efficient* size, the smallest whose predicted cost per
token is within ``EFFICIENCY`` of the largest chunk's; measured, that cost
the TBT target, see its note). The platform's constant stays as the floor
(what decode-heavy batches and the TBT SLO were tuned to), so a fast host
keeps its budget and a slow one gets what its own profile says it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from medha_vllm.policy.predictor import BatchShape, LinearBatchPredictor

EFFICIENCY = 1.25
# The derived budget never exceeds this multiple of the platform default
# (a profile extrapolated far past what it measured must not stall decodes).
MAX_RAISE = 4.0


@dataclass(frozen=True)
class DerivedBudget:
    target_s: float
    chunk: int  # the chunk the budget fits
    chunk_time_s: float  # predicted time of that chunk at the longest context
    context: int
    reason: str


def efficient_chunk(predictor: LinearBatchPredictor, context: int, min_chunk: int, max_chunk: int) -> int:
    """Smallest chunk (min_chunk x 2^k, capped at max_chunk) whose predicted
    marginal cost per token, appended after ``context`` tokens, is within
    EFFICIENCY of max_chunk's after the same context. Marginal: the
    iteration's fixed cost (the empty batch) is left out, since decodes share
    it whatever the chunk; what is left per chunk is the context it re-reads."""
    empty = predictor.predict(BatchShape())

    def per_token(c: int) -> float:
        return (predictor.predict(BatchShape(((c, context),))) - empty) / c

    best = per_token(max_chunk)
    c = min_chunk
    while c < max_chunk:
        if per_token(c) <= EFFICIENCY * best:
            return c
        c *= 2
    return max_chunk


def derive_target(predictor: LinearBatchPredictor, context: int, min_chunk: int, max_chunk: int,
                  floor_s: float, fit: str = "min") -> DerivedBudget:
    """``fit="min"`` (the default): the budget fits a min_chunk-token chunk at
    ``context``; ``fit="efficient"``: a chunk of efficient size. NOTE(medha):
    "efficient" was tried first and measured in `make bench-hol` on this
    project's host (bfloat16): the budget rose to 0.323 s (a 512-token chunk
    at 64K), which made short-request isolation 1.17x idle but Medha's TBT
    P99 372 ms, no better than chunked vLLM's (368 ms). Fitting the smallest
    chunk is what the old constant failed at on slow hosts, without that cost."""
    eff = efficient_chunk(predictor, context, min_chunk, max_chunk)
    c = eff if fit == "efficient" else min_chunk
    t = predictor.predict(BatchShape(((c, context),)))
    what = (f"the smallest chunk within {EFFICIENCY}x of a {max_chunk}-token chunk's cost per token"
            if fit == "efficient" else f"min_chunk_size; a chunk within {EFFICIENCY}x of a "
            f"{max_chunk}-token chunk's cost per token would be {eff} tokens")
    if t <= floor_s:
        reason = (f"platform default {floor_s:.3f} s: it fits a {c}-token chunk at {context} tokens of "
                  f"context (predicted {t:.3f} s; {what})")
        return DerivedBudget(floor_s, c, t, context, reason)
    target = min(t, MAX_RAISE * floor_s)
    reason = (f"raised from the platform default {floor_s:.3f} s so that a {c}-token chunk fits at "
              f"{context} tokens of context (predicted {t:.3f} s on this host; {what})"
              + (f", capped at {MAX_RAISE:g}x the default" if target < t else ""))
    return DerivedBudget(target, c, t, context, reason)


@dataclass(frozen=True)
class Budgets:
    target_s: float
    solo_s: float
    tbt_slo_s: float
    reason: str


def budgets_for(cfg, predictor: LinearBatchPredictor, context: int, floor_s: float) -> Budgets:
    """The iteration budgets of a resolved MedhaConfig, with the target
    derived from ``predictor`` (a profile of this host) unless the user set
    it; the solo budget (8x) and TBT SLO (1.5x) follow it unless set too."""
    explicit = cfg._explicit
    if "target_batch_time_s" in explicit:
        target, reason = cfg.target_batch_time_s, "target_batch_time_s set by the user"
    else:
        d = derive_target(predictor, context, cfg.min_chunk_size, cfg.max_chunk_size, floor_s)
        target, reason = d.target_s, d.reason
    solo = cfg.solo_batch_time_s if "solo_batch_time_s" in explicit else 8 * target
    tbt = cfg.tbt_slo_s if "tbt_slo_s" in explicit else 1.5 * target
    return Budgets(target, max(solo, target), tbt, reason)
