"""KV-cache parallelism's engine-side pieces without an engine: the layout
both the scheduler and the workers derive (plan.py), the worker's block-id
rewrite (runtime.py), the executor's per-group KV config (executor.py), and
the start-up refusals of impossible layouts (configure.py) on vLLM's real
config builder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medha_vllm.kvp.plan import make_plan
from medha_vllm.kvp.runtime import localize_ids, localize_scheduler_output
from medha_vllm.kvp.shards import ShardError


def test_default_shard_is_one_workers_usable_cache():
    p = make_plan(2, 40, 32, None, 2048)
    assert (p.shard_tokens, p.blocks_per_group, p.layout.max_tokens) == (39 * 32, 40, 2 * 39 * 32)


@pytest.mark.parametrize("args, words", [
    ((2, 40, 32, None, 4096), ["--max-model-len 4096", "needs 4", "kv_parallel_size is 2"]),
    ((2, 40, 32, 2048, 2048), ["kvp_max_tokens_per_group = 2048", "39 blocks x 32"]),
    ((2, 40, 32, 500, 512), ["kvp_max_tokens_per_group = 500", "multiple of the KV block size 32"]),
    ((4, 1, 32, None, 64), ["each group's KV cache has 1 blocks"]),
])
def test_impossible_layouts_name_the_setting(args, words):
    with pytest.raises(ShardError) as e:
        make_plan(*args)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_localize_maps_own_blocks_and_points_the_rest_at_the_null_block():
    # Group 1 of 3 with N = 10: global ids 10..19 are local 0..9.
    assert localize_ids([3, 11, 19, 20, 10], 1, 10) == [0, 1, 9, 0, 0]
    new = SimpleNamespace(block_ids=([1, 2, 12],))
    cached = SimpleNamespace(new_block_ids=[None, ([13, 25],)])
    so = SimpleNamespace(scheduled_new_reqs=[new], scheduled_cached_reqs=cached,
                         new_block_ids_to_zero=[2, 12, 10, 25], kv_cache_block_copies=None)
    localize_scheduler_output(so, 1, 10)
    assert new.block_ids == ([0, 0, 2],)
    assert cached.new_block_ids == [None, ([3, 0],)]
    # Only this group's blocks are zeroed here; its null block never.
    assert so.new_block_ids_to_zero == [2]
    localize_scheduler_output(so, 1, 10)  # once per step: a second call changes nothing
    assert new.block_ids == ([0, 0, 2],)


@pytest.mark.parametrize("layer_outer", [True, False])
def test_executor_gives_each_worker_its_groups_share_of_the_kv_config(layer_outer):
    from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheTensor

    from medha_vllm.kvp.executor import shrink_to_group

    page, total, layers = 4096, 100, 4
    if layer_outer:
        t = KVCacheTensor(size=page * total * layers, layers=[f"l{i}" for i in range(layers)],
                          layer_stride=page * total, block_stride=page)
    else:
        t = KVCacheTensor(size=page * total * layers, layers=[f"l{i}" for i in range(layers)],
                          layer_stride=page, block_stride=page * layers)
    cfg = KVCacheConfig(num_blocks=total, kv_cache_tensors=[t], kv_cache_groups=[])
    out = shrink_to_group(cfg, 2)
    s = out.kv_cache_tensors[0]
    assert out.num_blocks == 50 and s.size == page * 50 * layers
    # Every layer's last block ends inside the allocation.
    last = s.offset + (layers - 1) * s.layer_stride + 49 * s.block_stride + page
    assert last <= s.size
    assert cfg.num_blocks == total  # the scheduler's copy is untouched


def _engine_config(synthetic_path, medha: dict, **kw):
    from vllm.engine.arg_utils import EngineArgs

    kw.setdefault("scheduler_cls", "medha_vllm.scheduler.MedhaScheduler")
    return EngineArgs(model=synthetic_path, max_model_len=1024, block_size=32,
                      additional_config={"medha": medha}, **kw).create_engine_config()


def test_kvp_config_selects_medhas_executor_and_worker(synthetic_path):
    from medha_vllm.kvp.executor import KVPExecutor

    vc = _engine_config(synthetic_path, {"kv_parallel_size": 2}, num_gpu_blocks_override=40,
                        enable_prefix_caching=True)
    pc = vc.parallel_config
    assert pc.distributed_executor_backend is KVPExecutor
    assert pc.worker_cls == "medha_vllm.kvp.worker.KVPWorker"
    assert vc.cache_config.num_gpu_blocks_override == 80  # per worker, as without KVP
    assert vc.cache_config.enable_prefix_caching is False


def test_without_kvp_nothing_changes(synthetic_path):
    vc = _engine_config(synthetic_path, {})
    assert vc.parallel_config.distributed_executor_backend in (None, "uni", "mp")
    assert "kvp" not in str(vc.parallel_config.worker_cls)


@pytest.mark.parametrize("medha, kw, words", [
    ({"kv_parallel_size": 2}, {"scheduler_cls": None}, "needs --scheduler medha"),
    ({"kv_parallel_size": 2, "attention_backend": "vllm"}, {}, "needs Medha's attention backend"),
    ({"kv_parallel_size": 2}, {"distributed_executor_backend": "external_launcher"},
     "--distributed-executor-backend external_launcher is not supported"),
    ({"kvp_max_tokens_per_group": 512}, {}, "needs 'kv_parallel_size'"),
])
def test_bad_kvp_layouts_are_refused_naming_the_setting(synthetic_path, medha, kw, words):
    from medha_vllm.config import MedhaConfigError

    if kw.get("scheduler_cls", "x") is None:
        kw = {**kw, "scheduler_cls": "vllm.v1.core.sched.scheduler.Scheduler"}
    with pytest.raises(MedhaConfigError) as e:
        _engine_config(synthetic_path, medha, **kw)
    assert words in str(e.value), str(e.value)


def test_more_workers_than_the_machine_can_hold_are_refused(synthetic_path):
    from medha_vllm.config import MedhaConfigError
    from medha_vllm.kvp.configure import placement_problem

    gib = 1 << 30
    assert placement_problem(4, 4 * gib, gib, 24 * gib) is None
    why = placement_problem(8, 4 * gib, gib, 24 * gib)
    assert "8 workers need about 40.0 GiB" in why and "24.0 GiB are available" in why
    # On vLLM's real config: 64 groups of 1 TiB of KV cache each.
    with pytest.raises(MedhaConfigError, match="64 workers need about"):
        _engine_config(synthetic_path, {"kv_parallel_size": 64}, kv_cache_memory_bytes=1 << 40)


def test_a_model_the_kernel_cannot_serve_is_refused_naming_kvp():
    """KVP needs each shard's LSE from Medha's kernel: a model it cannot
    serve (here its refusal reason for fp8 KV) stops start-up in the worker,
    naming the setting; a servable one gets the kernel on every step."""
    from medha_vllm.attention.backend import kvp_choice
    from medha_vllm.attention.selection import MedhaAttentionError

    with pytest.raises(MedhaAttentionError, match=r"--medha-kv-parallel-size 2 needs .*fp8"):
        kvp_choice("kv_cache_dtype fp8 is not served", 2)
    choice = kvp_choice(None, 2)
    assert choice.backend == "medha" and choice.native_cells is None
