"""LARS: length-aware least relative slack.

For request r with arrival a, TTFT deadline d (relative to arrival), total
prefill work w_total and remaining work w(t):

    slack      s   = a + d - t - w(t)
    priority   rho = s / w_total          (smaller = more urgent)

Dividing by w_total makes the order length-aware: 2 s of slack is little for a
100 s prefill and a lot for a 1 s one. Deadlines are length-aware too:
d = max(multiplier x predicted standalone prefill time, floor), unless the
request carries its own (vllm_xargs "ttft_deadline_s").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SlackState:
    # Arrival time (s, same clock as `now` arguments).
    arrival: float
    # TTFT deadline relative to arrival (s).
    ttft_deadline_s: float
    # Predicted standalone prefill time of the whole prompt (s): w_total.
    total_work_s: float
    # Per-request TBT deadline (s) for decodes.
    tbt_deadline_s: float
    # User priority class (vLLM's `priority`, lower first); LARS orders within a class.
    user_priority: int = 0
    # The client declared a TTFT deadline below its floor and it was raised.
    floored: bool = False


def length_aware_ttft_deadline(standalone_prefill_s: float, multiplier: float,
                               floor_s: float) -> float:
    return max(multiplier * standalone_prefill_s, floor_s)


def slack(state: SlackState, now: float, remaining_work_s: float) -> float:
    return state.arrival + state.ttft_deadline_s - now - remaining_work_s


def relative_slack(state: SlackState, now: float, remaining_work_s: float) -> float:
    return slack(state, now, remaining_work_s) / max(state.total_work_s, 1e-6)


def priority_key(state: SlackState, now: float, remaining_work_s: float,
                 tiebreak: str = "") -> tuple:
    """Sort key: user priority class first, then relative slack, then arrival."""
    return (state.user_priority, relative_slack(state, now, remaining_work_s),
            state.arrival, tiebreak)


def space_share(target_s: float, rho: float, rho_max: float) -> float:
    """Budget a long prefill may use: target x (1 - clamp(rho, 0, rho_max))."""
    return target_s * (1.0 - min(max(rho, 0.0), rho_max))
