"""The waiting queue as the planner ranks it, without a Python object per
request per iteration.

NOTE(medha): with 1,000 requests queued, building a RequestView and a LARS
key for each of them every iteration costs milliseconds, though only the few
most urgent can be admitted (the planner's waiting cut). A queued request
has computed nothing, so its remaining work is its whole standalone prefill
W and its relative slack at time t is linear in t:

    rho(t) = (a + d - t - W) / W = base - t * inv_work,
    base = (a + d - W) / W,  inv_work = 1 / W.

`RankTable` keeps (priority, arrival, base, inv_work, a + d) per request in
numpy columns, filled once when the request's slack state is made; each
iteration gathers the waiting requests' rows, orders them in C and builds
full RequestViews only for the most urgent `k`. Requests in the queue with
computed tokens (none in vLLM 0.32 outside KV transfers) are ranked exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from medha_vllm.policy.lars import SlackState

_COLS = 5  # user_priority, arrival, base, inv_work, due


class RankTable:
    """Rank rows by request id, in reusable slots of numpy columns."""

    def __init__(self, capacity: int = 1024) -> None:
        self._rows = np.zeros((capacity, _COLS))
        self._slot: dict[str, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        # Bumped by clear(): slots cached elsewhere are stale after it.
        self.generation = 0
        # req_id -> slot or None, at dict speed (the per-iteration gather).
        self.lookup = self._slot.get

    def __len__(self) -> int:
        return len(self._slot)

    def add(self, req_id: str, st: SlackState) -> int:
        slot = self._slot.get(req_id)
        if slot is None:
            if not self._free:
                n = len(self._rows)
                self._rows = np.vstack([self._rows, np.zeros((n, _COLS))])
                self._free = list(range(2 * n - 1, n - 1, -1))
            slot = self._slot[req_id] = self._free.pop()
        w = max(st.total_work_s, 1e-6)
        due = st.arrival + st.ttft_deadline_s
        self._rows[slot] = (st.user_priority, st.arrival, (due - st.total_work_s) / w, 1.0 / w, due)
        return slot


    def drop(self, req_id: str) -> None:
        slot = self._slot.pop(req_id, None)
        if slot is not None:
            self._free.append(slot)

    def clear(self) -> None:
        self._free.extend(self._slot.values())
        self._slot.clear()
        self.generation += 1

    def order(self, slots: np.ndarray, now: float, order: str,
              starvation_guard: float = 0.0) -> np.ndarray:
        """Positions into `slots`, most urgent first: (priority, tier, urgency,
        arrival), as planner.priority_of ranks them."""
        rows = self._rows[slots]
        tier = np.ones(len(rows))
        if order == "fcfs":
            urgency = rows[:, 1]
        elif order == "edf":
            urgency = rows[:, 4]
        else:
            urgency = rows[:, 2] - now * rows[:, 3]
            if starvation_guard > 0:
                since = rows[:, 1] + starvation_guard * (rows[:, 4] - rows[:, 1])
                starving = now >= since
                tier[starving] = 0
                urgency = np.where(starving, since, urgency)
        return np.lexsort((rows[:, 1], urgency, tier, rows[:, 0]))


@dataclass(frozen=True)
class WaitingSet:
    """Admissible waiting requests, queue order, as the planner sees them."""

    # Rank-table slot of each queued request (nothing computed yet).
    slots: np.ndarray
    # Their rows.
    table: RankTable
    # Full view of the i-th queued request, built on demand; None when that
    # request cannot be admitted now (the next most urgent is taken instead).
    view_of: Callable[[int], object]
    # Waiting requests with computed tokens (ranked with exact remaining work).
    others: tuple = ()

    def __len__(self) -> int:
        """Queued requests (some may not be admissible now: see view_of)."""
        return len(self.slots) + len(self.others)

    def candidates(self, k: int, now: float, order: str, starvation_guard: float = 0.0) -> list:
        """The `k` most urgent admissible queued requests' views (by their
        rows), plus every request in `others`; the planner ranks them exactly."""
        n = len(self.slots)
        if n <= k:
            views = [self.view_of(i) for i in range(n)]
            return [v for v in views if v is not None] + list(self.others)
        picked = []
        for i in self.table.order(self.slots, now, order, starvation_guard).tolist():
            v = self.view_of(i)
            if v is not None:
                picked.append(v)
                if len(picked) == k:
                    break
        return picked + list(self.others)

    @classmethod
    def of(cls, views: Sequence) -> "WaitingSet":
        """From ready-made RequestViews (simulator, tests)."""
        fresh = [v for v in views if v.computed_tokens == 0 and v.in_flight_tokens == 0]
        table = RankTable(max(16, len(fresh)))
        slots = np.array([table.add(v.req_id, v.slack) for v in fresh], dtype=np.int64)
        return cls(slots, table, fresh.__getitem__,
                   tuple(v for v in views if v.computed_tokens or v.in_flight_tokens))

    @classmethod
    def empty(cls) -> "WaitingSet":
        return cls(np.zeros(0, dtype=np.int64), RankTable(1), lambda i: None)
