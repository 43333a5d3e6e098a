"""KV-cache parallelism in the real MedhaScheduler on vLLM's real Scheduler,
KV-cache manager and block pool (harness.py: no engine, outputs faked).

With G groups of N blocks the pool holds G x N blocks; a request's block i
must come from group (i x block_size) // S, a chunk must never cross a group
boundary, a group short of blocks makes the step wait or recompute the least
urgent request (vLLM's and Medha's rules), and every block of every group
comes back when requests finish, are aborted or are freed for recompute.
"""

from __future__ import annotations

import random

import pytest
from harness import Driver, make_request, make_scheduler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medha_vllm.policy.predictor import LinearBatchPredictor

MS_PER_TOKEN = LinearBatchPredictor([0.0, 1e-3, 0.0, 0.0, 0.0, 0.0])
BLOCK = 16


def kvp_scheduler(model, *, groups=2, shard=256, blocks_per_group=64, token_budget=4096,
                  max_model_len=None, medha=None):
    s = make_scheduler(model, medha={"target_batch_time_s": 0.1, "solo_batch_time_s": 0.1,
                                     "kv_parallel_size": groups,
                                     "kvp_max_tokens_per_group": shard, **(medha or {})},
                       num_blocks=groups * blocks_per_group, block_size=BLOCK,
                       token_budget=token_budget, max_model_len=max_model_len or groups * shard)
    s.set_predictor(MS_PER_TOKEN)
    return s


def audit(s) -> None:
    """The per-group books of the live scheduler: every held block in the
    group that owns its tokens, none twice, no null block handed out, and
    held + free = N - 1 in every group."""
    kv = s.kv_cache_manager
    queue = kv.block_pool.free_block_queue
    layout, n = s.kvp.layout, s.kvp.blocks_per_group
    mgr = kv.coordinator.single_type_managers[0]
    held = [0] * layout.groups
    seen: set[int] = set()
    for rid, blocks in mgr.req_to_blocks.items():
        for i, b in enumerate(blocks):
            g = (i * BLOCK) // layout.shard_tokens
            assert b.block_id // n == g, f"{rid}: block {i} (id {b.block_id}) not in group {g}"
            assert b.block_id % n != 0, f"{rid}: null block {b.block_id} handed out"
            assert b.block_id not in seen, f"block {b.block_id} held twice"
            seen.add(b.block_id)
            held[g] += 1
    for g in range(layout.groups):
        free_ids = {b.block_id for b in queue.queues[g].get_all_free_blocks()}
        assert not free_ids & seen, f"group {g}: a block is both held and free"
        assert all(b // n == g for b in free_ids), f"group {g}'s queue holds another group's block"
        assert held[g] + queue.free_in(g) == n - 1, \
            f"group {g}: {held[g]} held + {queue.free_in(g)} free != {n - 1} (a block leaked)"


class AuditingDriver(Driver):
    def step(self) -> bool:
        more = super().step()
        audit(self.sched)
        return more


def test_a_long_prompt_is_chunked_at_group_boundaries(synthetic_path):
    """S = 256, chunks of up to 96 tokens (0.1 s at 1 ms a token): the chunk
    that reaches a boundary is cut there, the next starts the new group."""
    s = kvp_scheduler(synthetic_path, groups=3, shard=256, max_model_len=768)
    d = AuditingDriver(s, MS_PER_TOKEN.predict, [make_request("long", 700, 0.0, max_tokens=3)])
    d.run()
    chunks = [r.run["long"] for r in d.rows if r.run.get("long", 0) > 1]
    assert chunks == [96, 96, 64, 96, 96, 64, 96, 92]  # 0-256 | 256-512 | 512-700
    ends = [sum(chunks[:i + 1]) for i in range(len(chunks))]
    assert 256 in ends and 512 in ends
    assert d.finished["long"] > 0
    audit(s)
    assert all(s.kv_cache_manager.block_pool.free_block_queue.free_in(g) == 63 for g in range(3))


def test_per_group_admission_refuses_while_the_aggregate_has_room(synthetic_path):
    """allocate_slots returns None when the group a step grows into is short,
    even though other groups' free blocks would cover it in total."""
    s = kvp_scheduler(synthetic_path, groups=2, shard=64, blocks_per_group=10, max_model_len=128)
    kv = s.kv_cache_manager
    queue = kv.block_pool.free_block_queue
    r = make_request("r", 120, 0.0)
    s.add_request(r)
    assert kv.allocate_slots(r, 64) is not None  # group 0: 4 blocks
    r.num_computed_tokens = 64
    taken = queue.queues[1].popleft_n(7)  # leave group 1 two of its 9 blocks
    assert queue.num_free_blocks == 5 + 2  # room for 4 in all
    assert kv.allocate_slots(r, 56) is None  # 4 blocks needed in group 1, 2 free
    queue.queues[1].append_n(taken)
    assert kv.allocate_slots(r, 56) is not None


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), shard=st.sampled_from([64, 128, 256]),
       blocks=st.integers(18, 40))
def test_blocks_never_leak_nor_land_in_another_group(synthetic_path, seed, shard, blocks):
    """Random mixes of short and boundary-crossing requests, arriving over
    time, under KV pressure, some aborted midway: after every step the books
    hold (audit), and at the end every block of every group is free."""
    rng = random.Random(seed)
    s = kvp_scheduler(synthetic_path, groups=3, shard=shard, blocks_per_group=blocks,
                      token_budget=256, max_model_len=min(3 * shard, 3 * (blocks - 1) * BLOCK))
    longest = min(3 * shard, 3 * (blocks - 1) * BLOCK) - 8
    reqs = [make_request(f"r{i}", rng.choice([rng.randint(4, 60), rng.randint(61, longest)]),
                         rng.uniform(0, 0.5), max_tokens=rng.randint(1, 6),
                         ttft_deadline_s=rng.choice([0.5, 5.0, 50.0]))
            for i in range(rng.randint(3, 9))]
    abort = {r.request_id for r in reqs if rng.random() < 0.2}
    d = AuditingDriver(s, MS_PER_TOKEN.predict, reqs)
    for _ in range(5000):
        if not d.step():
            break
        for rid in list(abort):
            req = s.requests.get(rid)
            if req is not None and req.num_computed_tokens > 0:
                from vllm.v1.request import RequestStatus

                s.finish_requests([rid], RequestStatus.FINISHED_ABORTED)
                abort.discard(rid)
    else:
        pytest.fail("the workload did not finish")
    audit(s)
    queue = s.kv_cache_manager.block_pool.free_block_queue
    assert [queue.free_in(g) for g in range(3)] == [blocks - 1] * 3
