"""vLLM's FCFS waiting queue, keeping its membership as a dict.

NOTE(medha): the planner ranks the waiting queue every iteration a running
slot is free. Walking a 1,000-request deque for that (each request's status,
its computed tokens, its rank-table slot) touches 1,000 Python objects per
iteration, most of them out of cache by then: ~0.7 ms of a ~4.7 ms
`schedule()` in `make bench-sched`. This queue is the same deque, with the
same methods vLLM calls (it *is* an `FCFSRequestQueue`), and also keeps
`members` (req_id -> Request) in step with every insertion and removal, so
the view builder (engine_view.py) reads the membership and the rank-table
slots it cached there, and walks no request it does not pick.

Every deque mutator a caller can reach is overridden (vLLM's queue methods
are built on them: `add_request` is `append`, `pop_request` is `popleft`,
`prepend_requests` is `extendleft`, `remove_requests` is `clear` + `extend`);
`tests/unit/test_waiting_queue.py` checks the membership against the deque
after random sequences of every one of them.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.request import Request


class IndexedWaitingQueue(FCFSRequestQueue):
    """An FCFS waiting queue with `members` kept in step."""

    def __init__(self, requests: Iterable[Request] = ()) -> None:
        super().__init__()
        # req_id -> Request, for every request in the deque.
        self.members: dict[str, Request] = {}
        # req_id -> rank-table slot, filled by the view builder (a cache: it
        # drops a request's entry when the request leaves the queue).
        self.slots: dict[str, int] = {}
        # The generation of the rank table `slots` refer to.
        self.slots_generation = -1
        # Requests that entered since the view builder last looked.
        self.entered: list[Request] = []
        self.extend(requests)

    # Membership.
    def _enter(self, r: Request) -> None:
        self.members[r.request_id] = r
        self.entered.append(r)

    def _leave(self, r: Request) -> None:
        if self.members.pop(r.request_id, None) is not None:
            self.slots.pop(r.request_id, None)

    # Every deque mutator.
    def append(self, r: Request) -> None:
        deque.append(self, r)
        self._enter(r)

    def appendleft(self, r: Request) -> None:
        deque.appendleft(self, r)
        self._enter(r)

    def insert(self, i: int, r: Request) -> None:
        deque.insert(self, i, r)
        self._enter(r)

    def extend(self, requests: Iterable[Request]) -> None:
        requests = list(requests)
        deque.extend(self, requests)
        for r in requests:
            self._enter(r)

    def extendleft(self, requests: Iterable[Request]) -> None:
        requests = list(requests)
        deque.extendleft(self, requests)
        for r in requests:
            self._enter(r)

    def __iadd__(self, requests: Iterable[Request]) -> "IndexedWaitingQueue":
        self.extend(requests)
        return self

    def popleft(self) -> Request:
        r = deque.popleft(self)
        self._leave(r)
        return r

    def pop(self) -> Request:
        r = deque.pop(self)
        self._leave(r)
        return r

    def remove(self, r: Request) -> None:
        deque.remove(self, r)
        self._leave(r)

    def __delitem__(self, i: int) -> None:
        r = self[i]
        deque.__delitem__(self, i)
        self._leave(r)

    def __setitem__(self, i: int, r: Request) -> None:
        old = self[i]
        deque.__setitem__(self, i, r)
        self._leave(old)
        self._enter(r)

    def clear(self) -> None:
        deque.clear(self)
        self.members.clear()
        self.slots.clear()
        self.entered.clear()

    def remove_requests(self, requests: Iterable[Request]) -> None:
        # NOTE(medha): vLLM's version is clear() + extend() of the rest, which
        # would re-enter every remaining request; the same filter, in place.
        gone = set(requests)
        kept = [r for r in self if r not in gone]
        deque.clear(self)
        deque.extend(self, kept)
        for r in gone:
            self._leave(r)
