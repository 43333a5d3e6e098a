"""Small discrete-time simulators over the real policy code (no vLLM).

- `simulate_single_server`: one resource, preemptive, one job at a time:
  the paper's worked example of FCFS vs EDF vs raw slack vs LARS.
- `simulate_engine`: engine iterations built by `plan_batch` with a given
  predictor as the clock: arrivals, LARS ordering, adaptive chunking, space
  sharing and decodes, as MedhaScheduler does them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medha_vllm.policy.batching import PrefillCandidate, plan_batch
from medha_vllm.policy.lars import SlackState, length_aware_ttft_deadline, priority_key
from medha_vllm.policy.predictor import LinearBatchPredictor, PrefillTimeTable


@dataclass
class SimJob:
    name: str
    arrival: float
    deadline: float  # relative to arrival
    work: float


def simulate_single_server(jobs: list[SimJob], policy: str, dt: float = 0.01,
                           horizon: float = 1e4) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Returns (finish time per job, [(t, job run in [t, t+dt))])."""
    done = {j.name: 0.0 for j in jobs}
    finish: dict[str, float] = {}
    timeline: list[tuple[float, str]] = []
    current: str | None = None
    steps = 0
    t = 0.0
    while len(finish) < len(jobs) and t < horizon:
        t = steps * dt
        ready = [j for j in jobs if j.arrival <= t + 1e-9 and j.name not in finish]
        if not ready:
            steps += 1
            continue
        if policy == "fcfs":  # non-preemptive
            if current is None or current in finish:
                current = min(ready, key=lambda j: (j.arrival, j.name)).name
            pick = next(j for j in ready if j.name == current)
        elif policy == "edf":
            pick = min(ready, key=lambda j: (j.arrival + j.deadline, j.name))
        elif policy == "slack":
            pick = min(ready, key=lambda j: (j.arrival + j.deadline - t - (j.work - done[j.name]), j.name))
        elif policy == "lars":
            def key(j):
                st = SlackState(j.arrival, j.deadline, j.work, 0.0)
                # NOTE: stable tie-break on the current job avoids thrashing.
                return priority_key(st, t, j.work - done[j.name], "0" if j.name == current else j.name)
            pick = min(ready, key=key)
        else:
            raise ValueError(policy)
        current = pick.name
        timeline.append((round(t, 6), pick.name))
        done[pick.name] += dt
        if done[pick.name] >= pick.work - 1e-9:
            finish[pick.name] = round(t + dt, 6)
        steps += 1
    return finish, timeline


@dataclass
class SimRequest:
    req_id: str
    arrival: float
    prompt_len: int
    output_len: int
    computed: int = 0
    generated: int = 0
    first_token: float | None = None
    finished: float | None = None


@dataclass
class EngineSimResult:
    requests: list[SimRequest]
    iterations: int
    # Per-iteration (start time, {req_id: chunk}) for step-table style checks.
    trace: list[tuple[float, dict[str, int]]] = field(default_factory=list)


def simulate_engine(reqs: list[SimRequest], predictor: LinearBatchPredictor, target_s: float,
                    token_budget: int = 2048, min_chunk: int = 32, max_chunk: int = 2048,
                    long_threshold: int = 16384, space_sharing: bool = True,
                    rho_max: float = 0.5, multiplier: float = 1.5, floor_s: float = 0.5,
                    max_len: int = 1 << 17, max_iterations: int = 200_000) -> EngineSimResult:
    table = PrefillTimeTable(predictor, target_s, min_chunk, max_chunk, max_len)
    states = {}
    for r in reqs:
        total = table(r.prompt_len)
        states[r.req_id] = SlackState(r.arrival, length_aware_ttft_deadline(total, multiplier, floor_s),
                                      total, 1.5 * target_s)
    t, it = 0.0, 0
    pending = sorted(reqs, key=lambda r: r.arrival)
    res = EngineSimResult(requests=reqs, iterations=0)
    while it < max_iterations:
        live = [r for r in pending if r.arrival <= t and r.finished is None]
        if not live:
            nxt = [r.arrival for r in pending if r.finished is None]
            if not nxt:
                break
            t = max(t, min(nxt))
            continue
        decodes = [r for r in live if r.computed >= r.prompt_len]
        prefills = [r for r in live if r.computed < r.prompt_len]
        keyed = sorted(prefills, key=lambda r: priority_key(
            states[r.req_id], t, table(r.prompt_len) - table(r.computed), r.req_id))
        cands = [PrefillCandidate(r.req_id, r.prompt_len - r.computed, r.computed,
                                  priority_key(states[r.req_id], t, table(r.prompt_len) - table(r.computed))[1],
                                  r.prompt_len >= long_threshold) for r in keyed]
        plan = plan_batch([r.prompt_len + r.generated for r in decodes], cands, predictor, target_s,
                          token_budget, min_chunk, max_chunk, space_sharing, rho_max)
        res.trace.append((t, dict(plan.chunks)))  # (start time, chunks)
        t += predictor.predict(plan.shape)
        it += 1
        for r in decodes:
            r.generated += 1
            if r.generated >= r.output_len:
                r.finished = t
        for r in prefills:
            c = plan.chunks.get(r.req_id, 0)
            r.computed += c
            if c and r.computed >= r.prompt_len:
                r.first_token = t
                r.generated = 1
                if r.output_len <= 1:
                    r.finished = t
    res.iterations = it
    return res

