"""Batch formation: decodes first, then prefill chunks in priority order, each
the largest chunk whose predicted batch time still fits the iteration budget;
space sharing caps one long prefill per batch at its share of the budget, and
a long prefill with slack sits out an iteration that ends a short prefill
(first-token yield)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from medha_vllm.policy.lars import space_share
from medha_vllm.policy.predictor import BatchShape, LinearBatchPredictor, largest_fitting_chunk


@dataclass
class PrefillCandidate:
    # Request id.
    req_id: str
    # Tokens this request still has to prefill before it can sample.
    remaining_tokens: int
    # Tokens already in its KV cache (context of the next chunk).
    computed_tokens: int
    # Relative slack rho (already computed for ordering; used for space sharing).
    rho: float
    # Long request (prompt >= long_request_threshold): space sharing applies.
    is_long: bool
    # User priority class (vLLM's `priority`, lower first).
    user_priority: int = 0


@dataclass
class BatchPlan:
    # req_id -> tokens of its prefill chunk in this iteration.
    chunks: dict[str, int] = field(default_factory=dict)
    # Predicted iteration time (s), decodes included, after correction.
    predicted_time_s: float = 0.0
    # The batch's shape (for the predictor's error accounting).
    shape: BatchShape = field(default_factory=BatchShape)
    # The long prefill (running or waiting) that this batch was planned
    # without, for a short one's first token.
    yielded: str | None = None


def plan_batch(
    decode_contexts: Sequence[int],
    candidates: Sequence[PrefillCandidate],
    predictor: LinearBatchPredictor,
    target_s: float,
    token_budget: int,
    min_chunk: int,
    max_chunk: int,
    space_sharing: bool = True,
    rho_max: float = 0.5,
    correction: float = 1.0,
    max_new_prefills: int | None = None,
    first_token_yield: bool = False,
) -> BatchPlan:
    """Candidates must be sorted most urgent first. `correction` multiplies
    every prediction (the online measured/predicted ratio).

    First-token yield (with space sharing): when the batch can end a short
    prefill of the long one's user priority class or a more urgent one (its
    whole remaining prompt fits, so the iteration ends with its first token),
    the long prefill with slack (rho > 0) sits out the batch.
    NOTE(medha): a short request's TTFT is the iteration in flight when it
    arrives plus the iteration that carries its prefill. Space sharing alone
    leaves at least target x (1 - rho_max) of long chunk in the second one:
    on a 2-core CPU at 64K context that is 0.1-0.2 s, more than the short's
    whole idle TTFT (0.06-0.11 s). Sitting out costs the long prefill one
    short iteration (the short's prefill and the decodes) per short request,
    and only while it is ahead of its deadline; once late (rho <= 0) or
    starving it shares the batch as LARS says."""
    if space_sharing and first_token_yield:
        lead = next((c for c in candidates if c.is_long), None)
        if lead is not None and lead.rho > 0:
            shorts = [c for c in candidates if not c.is_long]
            plan = plan_batch(decode_contexts, shorts, predictor, target_s, token_budget,
                              min_chunk, max_chunk, space_sharing, rho_max, correction,
                              max_new_prefills)
            if any(plan.chunks.get(c.req_id) == c.remaining_tokens
                   and c.user_priority <= lead.user_priority for c in shorts):
                plan.yielded = lead.req_id
                return plan
    shape = BatchShape(decode_contexts=tuple(decode_contexts))
    base = predictor.predict(shape)
    plan = BatchPlan(shape=shape)
    tokens_left = token_budget - len(decode_contexts)
    long_seen = False
    others_pending = sum(1 for c in candidates if not c.is_long and c.remaining_tokens > 0)
    admitted = 0
    for cand in candidates:
        if tokens_left <= 0:
            break
        if max_new_prefills is not None and admitted >= max_new_prefills:
            break
        limit = target_s
        if cand.is_long:
            if long_seen and space_sharing:
                continue  # NOTE(medha): at most one long prefill per batch.
            long_seen = True
            if space_sharing and others_pending:
                # The long request yields part of the budget to short prefills
                # (only when some are waiting: otherwise the budget would idle).
                limit = min(target_s, base * correction + space_share(target_s, cand.rho, rho_max))
        time_of = lambda n, b=base, ctx=cand.computed_tokens: \
            correction * predictor.predict_chunk(plan.shape, b, n, ctx)
        c = largest_fitting_chunk(time_of, limit, min(cand.remaining_tokens, tokens_left),
                                  min_chunk, max_chunk)
        if c == 0 and not plan.chunks:
            # NOTE(medha): progress guarantee: the most urgent prefill always
            # gets at least one minimal chunk, even when that overruns the
            # budget (at long context on a slow device one minimal chunk can
            # cost more than the whole budget): no request starves.
            c = min(min_chunk, cand.remaining_tokens, tokens_left)
        if c <= 0:
            continue
        plan.chunks[cand.req_id] = c
        base = predictor.predict_chunk(plan.shape, base, c, cand.computed_tokens)
        plan.shape = plan.shape.with_chunk(c, cand.computed_tokens)
        tokens_left -= c
        admitted += 1
        if not cand.is_long:
            others_pending -= 1
    plan.predicted_time_s = correction * base
    return plan


def drain_tail_cap(remaining_tokens: int, stages: int, min_tail: int) -> int | None:
    """Chunk cap that shortens the pipeline drain of a long prefill under SPP.

    The first token of a prompt pipelined over `stages` stages is ready when
    its last chunk leaves the last stage, so after the first stage has
    dispatched the last chunk, the pipeline still needs (stages - 1) stage
    passes of that chunk. Splitting the final `stages` chunks' worth of tokens
    ever smaller (remaining / stages each time, down to `min_tail` tokens)
    keeps every stage busy to the end and leaves only a small chunk to drain.
    Returns None when no cap applies (one stage, or far from the end)."""
    if stages <= 1 or remaining_tokens <= min_tail:
        return None
    return max(min_tail, -(-remaining_tokens // stages))
