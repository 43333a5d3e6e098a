"""Per-request SLOs: what a request asked for (`vllm_xargs`), the slack state
the planner ranks it by, and the deadline misses it suffers.

A client may send `"vllm_xargs": {"ttft_deadline_s": 2.0, "tbt_deadline_s":
0.2}` (SamplingParams.extra_args). A missing field gets the length-aware
default (policy.work.PrefillWork.new_slack_state); an invalid one (not a
positive number) is logged and replaced by the default.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from vllm.logger import init_logger

from medha_vllm.policy.lars import SlackState
from medha_vllm.policy.waiting import RankTable

# NOTE(medha): under the "vllm." namespace so vLLM's logging config shows it.
logger = init_logger(f"vllm.{__name__}")

XARG_TTFT = "ttft_deadline_s"
XARG_TBT = "tbt_deadline_s"


def positive_seconds(value: Any) -> float | None:
    """`value` as seconds if it is a positive finite number, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and value > 0:
        return float(value)
    return None


def requested_deadlines(request_id: str, extra_args: dict | None) -> tuple[float | None, float | None]:
    """(ttft_deadline_s, tbt_deadline_s) a request asked for; None = default."""
    xargs = extra_args or {}
    out = []
    for name in (XARG_TTFT, XARG_TBT):
        raw = xargs.get(name)
        val = positive_seconds(raw)
        if raw is not None and val is None:
            logger.warning("Medha: request %s: vllm_xargs %s=%r is not a positive number of "
                           "seconds; using the default deadline", request_id, name, raw)
        out.append(val)
    return out[0], out[1]


def slack_state_of(request: Any, work: Any, rules: Any,
                   on_floored: Callable[[str], None]) -> SlackState:
    """A vLLM request's slack state: its declared deadlines (`vllm_xargs`)
    under `rules`, else the length-aware defaults of `work` (PrefillWork).
    `on_floored(req_id)` is called when a declared TTFT deadline was raised to
    the client floor."""
    sp = request.sampling_params
    ttft, tbt = requested_deadlines(request.request_id, sp.extra_args if sp else None)
    st = work.new_slack_state(request.arrival_time, request.num_prompt_tokens, rules, ttft, tbt,
                              request.priority)
    if st.floored:
        on_floored(request.request_id)
        logger.debug("Medha: request %s: declared TTFT deadline %.3f s raised to the client "
                     "floor %.3f s", request.request_id, ttft, st.ttft_deadline_s)
    return st


class SloBook:
    """Slack state per live request, and the deadline of its next token.

    `make_state(request)` builds a SlackState the first time a request is
    seen (the planner's deadlines depend on the predictor, so the book is
    cleared when the predictor changes). `observe_tokens` applies the
    paper's miss rule: the first token is due at arrival + TTFT deadline,
    each later one a TBT deadline after the previous deadline (slack carried
    forward); a request counts as missed at its first late token."""

    def __init__(self, make_state: Callable[[Any], SlackState],
                 on_miss: Callable[[str, str], None]) -> None:
        self._make = make_state
        self._on_miss = on_miss
        self.states: dict[str, SlackState] = {}
        # The same states as rank rows, for the planner's waiting cut.
        self.table = RankTable()
        self._next_deadline: dict[str, float] = {}

    def state(self, request) -> SlackState:
        st = self.states.get(request.request_id)
        if st is None:
            st = self.states[request.request_id] = self._make(request)
            self.table.add(request.request_id, st)
        return st

    def slot(self, request) -> int:
        """The request's row in `table` (its slack state made if need be)."""
        slot = self.table.lookup(request.request_id)
        if slot is None:
            self.state(request)
            slot = self.table.lookup(request.request_id)
        return slot

    def clear(self) -> None:
        self.states.clear()
        self.table.clear()

    def observe_tokens(self, req_id: str, num_tokens: int, now: float) -> None:
        st = self.states.get(req_id)
        if st is None or num_tokens <= 0:
            return
        deadline = self._next_deadline.get(req_id)
        kind = "tbt"
        if deadline is None:
            deadline, kind = st.arrival + st.ttft_deadline_s, "ttft"
        if now > deadline:
            self._on_miss(req_id, kind)
        self._next_deadline[req_id] = deadline + st.tbt_deadline_s * num_tokens

    def forget(self, req_id: str) -> None:
        self.states.pop(req_id, None)
        self.table.drop(req_id)
        self._next_deadline.pop(req_id, None)
