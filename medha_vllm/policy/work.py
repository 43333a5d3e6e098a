"""Prefill work in seconds: the remaining-prefill-time table, the pipeline
(SPP) correction and the length-aware deadline of a new request.

Remaining work of a prompt with `done` of its `total` tokens dispatched is
T[total] - T[done], where T is the predicted adaptively-chunked prefill time
of the first n tokens alone (PrefillTimeTable). With `stages` pipeline stages,
consecutive chunks occupy the stages at once, so the work drains `stages`
times faster, plus the drain of the last chunk through the later stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from medha_vllm.policy.lars import SlackState, length_aware_ttft_deadline
from medha_vllm.policy.predictor import LinearBatchPredictor, PrefillTimeTable


@dataclass(frozen=True)
class DeadlineRules:
    # TTFT deadline = max(multiplier x standalone prefill, floor), unless the
    # request brings its own.
    ttft_multiplier: float = 1.5
    ttft_floor_s: float = 0.5
    # Default deadline between consecutive output tokens (s).
    tbt_slo_s: float = 0.075
    # Trust in client-declared deadlines (vllm_xargs). Off: ignored. On: a
    # declared TTFT deadline is raised to at least `client_ttft_floor_s`
    # seconds or, when that is None (the default), to the request's own
    # length-aware deadline: a client may relax its deadline (a batch job
    # that can wait), never tighten it past what the server would give it,
    # so a tiny deadline cannot jump the queue. An operator who trusts its
    # clients sets an absolute floor (0: any positive deadline is honoured).
    client_slos: bool = True
    client_ttft_floor_s: float | None = None

    def client_ttft_floor(self, standalone_prefill_s: float) -> float:
        """Lowest TTFT deadline a client may declare for this prompt."""
        if self.client_ttft_floor_s is not None:
            return self.client_ttft_floor_s
        return length_aware_ttft_deadline(standalone_prefill_s, self.ttft_multiplier,
                                          self.ttft_floor_s)


class PrefillWork:
    """Seconds of prefill work, as the planner and the deadlines see them."""

    def __init__(self, predictor: LinearBatchPredictor, target_s: float, min_chunk: int,
                 max_chunk: int, max_len: int, stages: int = 1) -> None:
        self.predictor = predictor
        self.target_s = target_s
        self.stages = max(1, stages)
        self.table = PrefillTimeTable(predictor, target_s, min_chunk, max_chunk, max_len)

    def pipelined(self, work_s: float, in_flight: bool = True) -> float:
        """Time to finish `work_s` single-pipeline seconds of prefill with SPP:
        `stages` times faster, plus the drain of the last chunk through the
        stages after the first (about (stages - 1) / stages of one iteration)."""
        if self.stages <= 1:
            return work_s
        if work_s <= 0 and not in_flight:
            return 0.0
        return work_s / self.stages + self.target_s * (self.stages - 1) / self.stages

    def standalone(self, prompt_tokens: int) -> float:
        """w_total: predicted prefill time of the whole prompt alone."""
        return self.pipelined(self.table(prompt_tokens))

    def remaining(self, total_tokens: int, computed_tokens: int, in_flight_tokens: int) -> float:
        """w(t): prefill time left from the dispatched cursor `computed_tokens`
        (chunks still in the pipeline are covered by the drain term)."""
        work = self.table(total_tokens) - self.table(computed_tokens)
        return self.pipelined(work, in_flight=in_flight_tokens > 0)

    def new_slack_state(self, arrival: float, prompt_tokens: int, rules: DeadlineRules,
                        ttft_deadline_s: float | None = None,
                        tbt_deadline_s: float | None = None,
                        user_priority: int = 0) -> SlackState:
        """Slack state of a new request: its own deadlines when it gave valid
        ones the rules trust (a TTFT deadline raised to the client floor),
        else the length-aware TTFT deadline and the default TBT SLO."""
        total = self.standalone(prompt_tokens)
        if not rules.client_slos:
            ttft_deadline_s = tbt_deadline_s = None
        if ttft_deadline_s is None:
            ttft = length_aware_ttft_deadline(total, rules.ttft_multiplier, rules.ttft_floor_s)
        else:
            ttft = max(ttft_deadline_s, rules.client_ttft_floor(total))
        tbt = tbt_deadline_s if tbt_deadline_s is not None else rules.tbt_slo_s
        return SlackState(arrival=arrival, ttft_deadline_s=ttft, total_work_s=total,
                          tbt_deadline_s=tbt, user_priority=user_priority,
                          floored=ttft_deadline_s is not None and ttft > ttft_deadline_s)
