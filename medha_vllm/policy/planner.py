"""The whole per-iteration decision of Medha, as one pure function.

`plan_iteration(view, settings, work, correction)` looks at a typed,
vLLM-free snapshot of the engine (`EngineView`) and returns a typed
`IterationPlan`: the chunk of every prefill, the running order, the waiting
requests to admit (in order), the running prefills to free and recompute, and
the budget used and why. MedhaScheduler (the vLLM adapter) builds the view and
applies the plan; the simulator in `simulate.py` drives the same function with
a fake clock. Nothing here imports vllm or torch.

The decisions, in the order they are taken (each one a named helper below):

1. `classify`: running requests are decodes (one token each), prefills, or
   busy (their last chunk or decode token is still in the pipeline: SPP).
2. `rank`: prefills by (user priority, relative slack, arrival): LARS.
3. `waiting cut`: waiting requests matter only when a running slot is free,
   and then only the `waiting_rank_limit` most urgent (heap selection).
4. `solo budget`: a prefill alone in the engine, after a quiet period with
   no other request, gets the larger solo budget.
5. `plan_batch` (batching.py): decodes first, then chunks in priority order,
   each the largest that fits the budget; space sharing caps one long
   prefill, which sits out a batch that ends a short prompt while it is
   ahead of its deadline (first-token yield).
6. `drain split`: with several pipeline stages, the end of a long prompt is
   split ever smaller so the pipeline drains after a small chunk.
7. `free-slot cap`: never admit more waiting requests than free slots.
8. `eviction`: a planned waiting request that cannot get its KV blocks frees
   running prefills less urgent than itself (least urgent first; they are
   recomputed later), but only if that is enough to admit it, and never for
   a request that was itself freed before (no eviction ping-pong).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Sequence

from medha_vllm.policy.batching import PrefillCandidate, drain_tail_cap, plan_batch
from medha_vllm.policy.lars import SlackState
from medha_vllm.policy.waiting import WaitingSet
from medha_vllm.policy.work import PrefillWork

Order = Literal["lars", "fcfs", "edf"]


class RequestView(NamedTuple):
    """One request as the planner sees it (a NamedTuple: the adapter builds
    one per running and waiting request every iteration, so it must be cheap)."""

    # Request id.
    req_id: str
    # Prompt length (tokens); decides "long" for space sharing.
    prompt_tokens: int
    # Tokens the request has now (prompt + generated); all must be in the KV cache.
    total_tokens: int
    # Tokens dispatched to the first pipeline stage (vLLM's num_computed_tokens).
    computed_tokens: int
    # Tokens dispatched whose batch has not come back yet (SPP).
    in_flight_tokens: int
    # Deadlines and total work (policy.work.PrefillWork.new_slack_state).
    slack: SlackState
    # KV blocks it holds now (0 for a waiting request).
    kv_blocks: int = 0
    # Times it was freed for recompute (vLLM's num_preemptions).
    num_preemptions: int = 0


@dataclass(frozen=True)
class EngineView:
    """The engine state the planner decides on (a snapshot; no vLLM objects)."""

    # Current time (s, same clock as SlackState.arrival).
    now: float
    # Running requests, in the engine's current running order.
    running: tuple[RequestView, ...]
    # Waiting requests that may be admitted (waiting or preempted), queue order
    # (policy/waiting.py: views are built only for the most urgent few).
    waiting: WaitingSet
    # All waiting requests, admissible or not (for the solo-budget rule).
    num_waiting: int
    # Running slots free (max_num_seqs - running).
    free_slots: int
    # Free KV-cache blocks.
    free_kv_blocks: int
    # Tokens per KV block.
    block_size: int
    # Scheduled-token budget of one iteration (max_num_scheduled_tokens).
    token_budget: int
    # Last time (same clock as `now`) the engine held more than one request
    # (running or waiting); -inf: never.
    last_company: float = -math.inf
    # Pipeline stages (SPP) and batches dispatched but not returned.
    stages: int = 1
    batches_in_flight: int = 0
    # KV-cache parallelism (medha_vllm/kvp): free blocks of each group and
    # the tokens of one request a group holds; () without KVP. A request's
    # tokens [g x S, (g + 1) x S) need blocks of group g.
    free_kv_per_group: tuple[int, ...] = ()
    kv_shard_tokens: int = 0


@dataclass(frozen=True)
class PlannerSettings:
    """Policy knobs (from MedhaConfig; see config.py for their meaning)."""

    target_batch_time_s: float
    solo_batch_time_s: float
    min_chunk: int
    max_chunk: int
    # A lone prefill gets the solo budget only once the engine has held no
    # other request for this long (s); 0: as soon as it is alone.
    solo_quiet_s: float = 0.0
    space_sharing: bool = True
    long_request_threshold: int = 16384
    rho_max: float = 0.5
    # First-token yield (policy/batching.py plan_batch): a long prefill with
    # slack sits out a batch that ends a short prefill.
    first_token_yield: bool = True
    # NOTE(medha): ranking every one of 1,000 queued requests each iteration
    # costs milliseconds; only the most urgent few can be admitted anyway.
    waiting_rank_limit: int = 64
    # Smallest chunk the SPP drain split makes (tokens).
    drain_min_tail_tokens: int = 256
    # Request order: Medha's LARS; FCFS and EDF exist for comparisons
    # (the paper's worked example, the property test's convoying planner).
    order: Order = "lars"
    # Starvation guard (LARS only): a prefill still unfinished at arrival +
    # guard x its TTFT deadline goes before every request that is not, the
    # earliest such first (0: off). See priority_of.
    starvation_guard: float = 2.0


@dataclass
class IterationPlan:
    """What one iteration does; MedhaScheduler applies it to vLLM."""

    # req_id -> prefill chunk (tokens) this iteration, running or admitted.
    chunks: dict[str, int] = field(default_factory=dict)
    # Running decodes (one token each, uncapped).
    decodes: tuple[str, ...] = ()
    # Running requests waiting on a batch in flight (nothing to dispatch).
    busy: tuple[str, ...] = ()
    # New running order: busy, decodes, then prefills most urgent first, so
    # vLLM's FCFS victim rule (running[-1]) frees the least urgent one.
    running_order: tuple[str, ...] = ()
    # Waiting requests to admit this iteration, in order.
    admit: tuple[str, ...] = ()
    # Running prefills that get no chunk (kept in KV: preemption between chunks).
    paused: tuple[str, ...] = ()
    # Running prefills to free now and recompute later (KV for `admit`).
    victims: tuple[str, ...] = ()
    # The long prefill that sat out this iteration for a short one's first
    # token (first-token yield; in `paused` when it is running, not admitted
    # when it is waiting), or None.
    yielded: str | None = None
    # Iteration budget (s) and why: "target" or "solo".
    budget_s: float = 0.0
    budget_reason: str = "target"
    # Predicted iteration time (s), after the online correction.
    predicted_time_s: float = 0.0
    # Relative slack of the most urgent prefill (None: no prefill).
    most_urgent_rho: float | None = None
    # Waiting requests ranked (after the waiting cut) and those cut short by
    # the drain split, for logs and tests.
    waiting_ranked: int = 0
    drain_split: tuple[str, ...] = ()


class Priority(NamedTuple):
    """Sort key of a prefill, smaller first. `rho` (LARS's relative slack) is
    after the unique id, so it never decides the order."""

    user_priority: int
    # 0: starving (past the starvation guard), 1: every other request.
    tier: int
    # Starving: the time it started starving; else rho (LARS), arrival (FCFS)
    # or absolute deadline (EDF).
    urgency: float
    arrival: float
    req_id: str
    rho: float


def priority_of(r: RequestView, now: float, work: PrefillWork, order: Order,
                starvation_guard: float = 0.0) -> Priority:
    """LARS key of a prefill: (user priority, tier, urgency, arrival, id).

    NOTE(medha): relative slack alone can starve a request under overload:
    late short requests reach very negative rho (little work to divide by)
    and keep going first, while a mid-sized prompt's rho falls slowly. The
    guard bounds that: once a prefill is still unfinished `starvation_guard` x
    its TTFT deadline after its arrival, it goes before every request that is
    not starving, in the order they started starving. Below the guard, the
    order is the paper's LARS."""
    st = r.slack
    if order == "fcfs":
        return Priority(st.user_priority, 1, st.arrival, st.arrival, r.req_id, st.arrival)
    if order == "edf":
        due = st.arrival + st.ttft_deadline_s
        return Priority(st.user_priority, 1, due, st.arrival, r.req_id, due)
    if r.computed_tokens == 0 and r.in_flight_tokens == 0:
        rem = st.total_work_s  # NOTE(medha): fast path for queued requests
    else:
        rem = work.remaining(r.total_tokens, r.computed_tokens, r.in_flight_tokens)
    rho = (st.arrival + st.ttft_deadline_s - now - rem) / max(st.total_work_s, 1e-6)
    if starvation_guard > 0:
        starving_since = st.arrival + starvation_guard * st.ttft_deadline_s
        if now >= starving_since:
            return Priority(st.user_priority, 0, starving_since, st.arrival, r.req_id, rho)
    return Priority(st.user_priority, 1, rho, st.arrival, r.req_id, rho)


def classify(running: Sequence[RequestView]) -> tuple[list, list, list]:
    """(busy, decodes, prefills) in running order."""
    busy, decodes, prefills = [], [], []
    for r in running:
        if r.computed_tokens >= r.total_tokens:
            busy.append(r)
        elif r.computed_tokens >= r.prompt_tokens:
            decodes.append(r)
        else:
            prefills.append(r)
    return busy, decodes, prefills


def plan_iteration(view: EngineView, settings: PlannerSettings, work: PrefillWork,
                   correction: float = 1.0) -> IterationPlan:
    """Medha's decision for one engine iteration (see the module docstring).
    `correction` multiplies every prediction (the online measured/predicted
    ratio of batches with a prefill)."""
    s = settings
    busy, decodes, prefills = classify(view.running)
    guard = s.starvation_guard if s.order == "lars" else 0.0
    keyed = [(priority_of(r, view.now, work, s.order, guard), r, True) for r in prefills]
    # Waiting cut.
    ranked_waiting = 0
    if view.free_slots > 0 and len(view.waiting):
        k = min(view.free_slots, s.waiting_rank_limit)
        now, order = view.now, s.order
        wkeyed = [(priority_of(r, now, work, order, guard), r, False)
                  for r in view.waiting.candidates(k, now, order, guard)]
        top = heapq.nsmallest(k, wkeyed, key=lambda kr: kr[0])
        ranked_waiting = len(top)
        keyed.extend(top)
    keyed.sort(key=lambda kr: kr[0])
    # Solo budget. NOTE(medha): a prefill alone in the engine protects nobody's
    # latency with small chunks: fewer, cheaper chunks; a request arriving
    # meanwhile waits at most one (stage's share of an) iteration. Only after
    # a quiet period: between two requests of a stream the prefill is alone
    # for moments, and a solo iteration begun then (1.2 s on a 2-core CPU)
    # is what the next arrival waits for (in `make bench-hol` 11 of 80 short
    # requests waited 0.3-1.7 s so, against a 0.17 s median).
    solo = (len(keyed) == 1 and len(view.running) + view.num_waiting == 1
            and view.now - view.last_company >= s.solo_quiet_s)
    budget = s.solo_batch_time_s if solo else s.target_batch_time_s
    cands = [PrefillCandidate(req_id=r.req_id,
                              remaining_tokens=r.total_tokens - r.computed_tokens,
                              computed_tokens=r.computed_tokens,
                              rho=k.rho if k.tier else -math.inf,  # starving: full budget
                              is_long=r.prompt_tokens >= s.long_request_threshold,
                              user_priority=k.user_priority)
             for k, r, _ in keyed]
    max_chunk = min(s.max_chunk, view.token_budget)

    def batch_of(candidates):
        return plan_batch([r.computed_tokens for r in decodes], candidates, work.predictor,
                          budget, view.token_budget, s.min_chunk, max_chunk,
                          space_sharing=s.space_sharing and s.order == "lars",
                          rho_max=s.rho_max, correction=correction,
                          first_token_yield=s.first_token_yield)

    batch = batch_of(cands)
    # Free-slot cap, then eviction for the admitted ones.
    planned_waiting = [r for _, r, is_running in keyed
                       if not is_running and r.req_id in batch.chunks][:max(view.free_slots, 0)]
    rank = {r.req_id: i for i, (_, r, _) in enumerate(keyed)}
    admit, victims = _admit_with_eviction(planned_waiting, prefills, rank, view)
    admitted = {r.req_id for r in admit}
    victim_ids = {r.req_id for r in victims}
    if victim_ids or len(admit) < len(planned_waiting):
        # NOTE(medha): budget given to a waiting request that cannot be
        # admitted (or to a victim) would idle: plan again without them, so
        # the iteration still carries the most urgent work that can run.
        keep = {r.req_id for r in prefills if r.req_id not in victim_ids} | admitted
        batch = batch_of([c for c in cands if c.req_id in keep])
    chunks = batch.chunks
    admit = [w for w in admit if w.req_id in chunks]
    drained = _drain_split(chunks, keyed, view.stages, s)
    live_prefills = sorted((r for r in prefills if r.req_id not in victim_ids),
                           key=lambda r: rank[r.req_id])
    return IterationPlan(
        chunks=chunks,
        decodes=tuple(r.req_id for r in decodes),
        busy=tuple(r.req_id for r in busy),
        running_order=tuple(r.req_id for r in busy + decodes + live_prefills),
        admit=tuple(r.req_id for r in admit),
        paused=tuple(r.req_id for r in live_prefills if r.req_id not in chunks),
        victims=tuple(r.req_id for r in victims),
        yielded=batch.yielded,
        budget_s=budget, budget_reason="solo" if solo else "target",
        predicted_time_s=batch.predicted_time_s,
        most_urgent_rho=keyed[0][0].rho if keyed and s.order == "lars" else None,
        waiting_ranked=ranked_waiting, drain_split=drained)


def _drain_split(chunks: dict[str, int], keyed: list, stages: int,
                 s: PlannerSettings) -> tuple[str, ...]:
    """SPP: split the end of a long prompt ever smaller so the pipeline drains
    fast (the first token waits for the last chunk to cross every stage).
    Short prompts are not split: per-chunk overheads would outweigh the saving."""
    if stages <= 1:
        return ()
    cut = []
    for _, r, _ in keyed:
        c = chunks.get(r.req_id)
        if c and r.prompt_tokens >= s.long_request_threshold:
            cap = drain_tail_cap(r.total_tokens - r.computed_tokens, stages,
                                 s.drain_min_tail_tokens)
            if cap is not None and cap < c:
                chunks[r.req_id] = cap
                cut.append(r.req_id)
    return tuple(cut)


def blocks_per_group(tokens: int, view: EngineView) -> tuple[int, ...]:
    """KV blocks a sequence of `tokens` tokens takes in each KV group (one
    entry without KV-cache parallelism)."""
    B, S = view.block_size, view.kv_shard_tokens
    if not view.free_kv_per_group:
        return (-(-tokens // B),)
    return tuple(-(-max(0, min(tokens, (g + 1) * S) - g * S) // B)
                 for g in range(len(view.free_kv_per_group)))


def _fits(free: tuple[int, ...], need: tuple[int, ...]) -> bool:
    return all(f >= n for f, n in zip(free, need))


def _add(a: tuple[int, ...], b: tuple[int, ...], sign: int = 1) -> tuple[int, ...]:
    return tuple(x + sign * y for x, y in zip(a, b))


def _admit_with_eviction(planned_waiting: list[RequestView], prefills: list[RequestView],
                         rank: dict[str, int], view: EngineView
                         ) -> tuple[list[RequestView], list[RequestView]]:
    """Admit planned waiting requests in order while their KV blocks fit.
    NOTE(medha): vLLM never lets a waiting request preempt a running one, so
    a long prefill paused between chunks would keep its KV cache while a more
    urgent short request waits. Medha frees running prefills less urgent than
    the waiting one (least urgent first; they are recomputed later, their
    tokens never lost), and only when that frees enough: evicting for a
    request that still cannot be admitted would throw work away for nothing.
    A request that was freed itself waits for blocks instead of evicting:
    otherwise the victim, now late, evicts its evictor and both keep
    recomputing (found by tests/sched/test_step_tables.py). Admission stops at the first request that cannot fit (as vLLM's waiting
    loop does), so the order of the plan is kept."""
    # Free blocks per KV group (one group without KV-cache parallelism): a
    # request fits when every group it spans has its blocks.
    free = view.free_kv_per_group or (view.free_kv_blocks,)
    admit: list[RequestView] = []
    victims: list[RequestView] = []
    for w in planned_waiting:
        need = blocks_per_group(w.total_tokens, view)
        if _fits(free, need):
            free = _add(free, need, -1)
            admit.append(w)
            continue
        if w.num_preemptions:
            break
        less_urgent = sorted((r for r in prefills if rank[r.req_id] > rank[w.req_id]
                              and r not in victims), key=lambda r: -rank[r.req_id])
        chosen, gain = [], tuple(0 for _ in free)
        for v in less_urgent:
            if _fits(_add(free, gain), need):
                break
            chosen.append(v)
            # A request's blocks are positional: its first kv_blocks blocks.
            gain = _add(gain, blocks_per_group(v.kv_blocks * view.block_size, view))
        if not _fits(_add(free, gain), need):
            break
        victims.extend(chosen)
        free = _add(_add(free, gain), need, -1)
        admit.append(w)
    return admit, victims
