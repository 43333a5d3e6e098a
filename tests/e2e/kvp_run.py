"""Run by test_kvp.py in a subprocess: greedy requests through the Python API
(float32, eager), as plain vLLM or as Medha with KV-cache parallelism, and
print token ids, log-probabilities and what the engine really ran as JSON.

argv: model, then a JSON object: {"kvp": G, "pp": P, "shard": S | null,
"blocks": per-worker KV blocks | null, "max_model_len": M, "prompts": [n, ...] or [[n, ...], ...] (batches in turn),
"max_tokens": T, "plain": bool, "ray_nodes": N (a Ray cluster of N nodes on
loopback, each with as many CPUs as one KVP group has workers: the workers are
Ray actors, one group per node)}. The engine core runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0), so the scheduler's KVP plan and counters
can be read; the workers are processes of their own.
"""

import json
import os
import sys

if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # Every Ray worker's start-up line, not one of them (read when ray is imported).
    os.environ["RAY_DEDUP_LOGS"] = "0"
    from vllm import LLM, SamplingParams

    from medha_vllm import SCHEDULER_CLS

    model, spec = sys.argv[1], json.loads(sys.argv[2])
    cluster = None
    if spec.get("ray_nodes"):
        # A Ray cluster of `ray_nodes` nodes on loopback, each with the CPUs
        # of one KVP group (PP x 1 workers), so vLLM's placement group fills
        # one node per group: the groups land on different nodes, as on a
        # cluster of machines.
        import ray
        from ray.cluster_utils import Cluster

        node = {"num_cpus": spec.get("pp", 1), "object_store_memory": 96 * 1024 * 1024}
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        for _ in range(spec["ray_nodes"] - 1):
            cluster.add_node(**node)
        ray.init(address=cluster.address)
        os.environ["RAY_ADDRESS"] = cluster.address
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # worker_facts, pickled
    kwargs = dict(model=model, dtype="float32", max_model_len=spec["max_model_len"], seed=0,
                  block_size=32, enforce_eager=True, pipeline_parallel_size=spec.get("pp", 1))
    if cluster is not None:
        kwargs["distributed_executor_backend"] = "ray"
    if spec.get("blocks"):
        kwargs["num_gpu_blocks_override"] = spec["blocks"]
    if not spec.get("plain"):
        medha = {"min_chunk_size": 32, "max_chunk_size": 32, "profile": False,
                 "attention_backend": "medha", "kv_parallel_size": spec["kvp"],
                 "target_batch_time_s": 0.2}
        if spec.get("shard"):
            medha["kvp_max_tokens_per_group"] = spec["shard"]
        kwargs.update(scheduler_cls=SCHEDULER_CLS, max_num_batched_tokens=64,
                      additional_config={"medha": medha})
    llm = LLM(**kwargs)
    sp = SamplingParams(max_tokens=spec["max_tokens"], temperature=0.0, logprobs=1, seed=0,
                        ignore_eos=True)
    # "prompts": lengths of one batch, or a list of batches run one after the other.
    batches = spec["prompts"] if isinstance(spec["prompts"][0], list) else [spec["prompts"]]
    outs = []
    for batch in batches:
        outs += llm.generate([{"prompt_token_ids": [(n * 7919 + k * 104729) % 40000 + 10
                                                    for k in range(n)]} for n in batch], sp)
    result = [{"tokens": list(o.outputs[0].token_ids),
               "logprobs": [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]}
              for o in outs]
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    engine = {"scheduler_cls": f"{type(sched).__module__}.{type(sched).__qualname__}",
              "executor_cls": type(llm.llm_engine.engine_core.engine_core.model_executor).__name__}
    if getattr(sched, "kvp", None) is not None:
        snap = sched.metrics.snap
        engine.update(kvp_groups=sched.kvp.groups, shard_tokens=sched.kvp.shard_tokens,
                      blocks_per_group=sched.kvp.blocks_per_group,
                      groups_per_request=snap.kvp_groups_per_request.counts,
                      pauses=snap.preemptions["pause"], recomputes=snap.preemptions["recompute"],
                      scheduler_blocks=sched.kv_cache_config.num_blocks)
    if cluster is not None:
        def worker_facts(worker):
            import ray

            from medha_vllm.kvp import runtime

            return {"rank": worker.rank, "group": runtime.get().group,
                    "node": ray.get_runtime_context().get_node_id(),
                    "actor": bool(ray.get_runtime_context().get_actor_id())}

        engine["workers"] = llm.collective_rpc(worker_facts)
        engine["nodes"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    print("RESULT " + json.dumps({"outputs": result, "engine": engine}), flush=True)
    if cluster is not None:
        del llm
        ray.shutdown()
        cluster.shutdown()
