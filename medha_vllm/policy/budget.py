"""The default iteration budget, derived from the host's profile (pure).

The budget is the iteration time that a short request arriving mid-prefill
waits for (the iteration in flight) and the time between a decode's tokens;
the long prefill wants it large enough that the iteration's fixed cost
(scheduling, sampling, the engine's per-step work) stays a small share of it.
The rule here: the platform's constant (what decode-heavy batches and the TBT
SLO were tuned to) unless this host's profile puts an iteration's fixed cost
above ``OVERHEAD_SHARE`` of it; then the budget is raised (at most
``MAX_RAISE`` x) so that it is that share.

NOTE(medha): an earlier rule raised the budget until one ``min_chunk_size``
chunk fitted at ``--max-model-len`` (and before it, a chunk of efficient
size). Measured in `make bench-hol` on the AVX2 host (native kernel,
first-token yield): that rule gave 0.207 s where the platform's 0.150 s
fits the chunk below 45,120 tokens of context, and it lengthened every
iteration, not only those near 64K: short TTFT P50 0.19 s against 0.16 s
(isolation 2.26 vs 1.87 x idle), TBT P99 262 vs 187 ms, for the same long
TTFT (180.8 vs 181.6 s). Past the context where one chunk of min_chunk_size
exceeds the budget, the most urgent prefill still runs one such chunk over
the budget (policy/batching.py); a long prefill ranked behind a short one
there gets a batch of its own next instead of a share of the short one's.
The start-up log says from which context that happens.
"""

from __future__ import annotations

from dataclasses import dataclass

from medha_vllm.policy.predictor import BatchShape, LinearBatchPredictor

# The largest share of the budget an iteration's fixed cost may take.
OVERHEAD_SHARE = 0.1
# The derived budget never exceeds this multiple of the platform default
# (a profile extrapolated far past what it measured must not stall decodes).
MAX_RAISE = 4.0


@dataclass(frozen=True)
class DerivedBudget:
    target_s: float
    # Predicted fixed cost of an iteration (one decode at no context).
    fixed_s: float
    chunk: int  # min_chunk_size
    chunk_time_s: float  # predicted time of that chunk at the longest context
    context: int
    # Smallest context (tokens, on the chunk grid) at which one chunk of
    # `chunk` tokens is predicted above the budget; None: it fits everywhere.
    overrun_context: int | None
    reason: str


def fixed_cost(predictor: LinearBatchPredictor) -> float:
    """Predicted time of the cheapest real iteration: one decode at no context."""
    return predictor.predict(BatchShape((), (1,)))


def overrun_context(predictor: LinearBatchPredictor, chunk: int, budget_s: float,
                    max_context: int) -> int | None:
    """Smallest context (a multiple of `chunk`) up to `max_context` at which a
    `chunk`-token chunk alone is predicted above `budget_s`, None if none."""
    time_at = lambda ctx: predictor.predict(BatchShape(((chunk, ctx),)))  # noqa: E731
    if time_at(max_context) <= budget_s:
        return None
    lo, hi = 0, max_context // chunk  # time is non-decreasing in the context
    while lo < hi:
        mid = (lo + hi) // 2
        if time_at(mid * chunk) > budget_s:
            hi = mid
        else:
            lo = mid + 1
    # Past the grid's last point only max_context itself may overrun.
    return lo * chunk if time_at(lo * chunk) > budget_s else max_context


def derive_target(predictor: LinearBatchPredictor, context: int, min_chunk: int,
                  floor_s: float) -> DerivedBudget:
    """The default budget for a host whose profile is `predictor`, serving
    contexts up to `context` tokens (see the module docstring)."""
    fixed = fixed_cost(predictor)
    want = fixed / OVERHEAD_SHARE
    if want <= floor_s:
        target = floor_s
        why = (f"platform default {floor_s:.3f} s: an iteration's fixed cost ({1e3 * fixed:.1f} ms "
               f"predicted on this host) is {fixed / floor_s:.0%} of it (<= {OVERHEAD_SHARE:.0%})")
    else:
        target = min(want, MAX_RAISE * floor_s)
        why = (f"raised from the platform default {floor_s:.3f} s so that an iteration's fixed "
               f"cost ({1e3 * fixed:.1f} ms predicted on this host) is at most "
               f"{OVERHEAD_SHARE:.0%} of it" + (f", capped at {MAX_RAISE:g}x the default"
                                                 if target < want else ""))
    t = predictor.predict(BatchShape(((min_chunk, context),)))
    over = overrun_context(predictor, min_chunk, target, context)
    if over is None:
        where = f"a {min_chunk}-token chunk fits up to {context} tokens of context (predicted {t:.3f} s)"
    else:
        where = (f"a {min_chunk}-token chunk fits below {over} tokens of context; from there on "
                 f"an iteration carries one {min_chunk}-token chunk over the budget (predicted "
                 f"{t:.3f} s at {context})")
    return DerivedBudget(target, fixed, min_chunk, t, context, over, f"{why}; {where}")


@dataclass(frozen=True)
class Budgets:
    target_s: float
    solo_s: float
    solo_quiet_s: float
    tbt_slo_s: float
    reason: str


def budgets_for(cfg, predictor: LinearBatchPredictor, context: int, floor_s: float) -> Budgets:
    """The iteration budgets of a resolved MedhaConfig, with the target
    derived from ``predictor`` (a profile of this host) unless the user set
    it; the solo budget (8x), its quiet period (2x the solo budget) and the
    TBT SLO (1.5x) follow it unless set too."""
    explicit = cfg._explicit
    if "target_batch_time_s" in explicit:
        target, reason = cfg.target_batch_time_s, "target_batch_time_s set by the user"
    else:
        d = derive_target(predictor, context, cfg.min_chunk_size, floor_s)
        target, reason = d.target_s, d.reason
    solo = max(cfg.solo_batch_time_s if "solo_batch_time_s" in explicit else 8 * target, target)
    quiet = cfg.solo_quiet_s if "solo_quiet_s" in explicit else 2 * solo
    tbt = cfg.tbt_slo_s if "tbt_slo_s" in explicit else 1.5 * target
    return Budgets(target, solo, quiet, tbt, reason)
