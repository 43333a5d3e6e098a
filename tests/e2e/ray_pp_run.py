"""Run by test_ray.py in a subprocess: the same greedy requests through the
Python API (`LLM(...)`, float32) either with plain vLLM on one worker ("single",
vLLM's own scheduler, no Ray) or with Medha's scheduler and pipeline parallelism
2 on Ray ("ray": two CPU workers as Ray actors, on a one-node Ray cluster this
script starts on loopback, or on the cluster at RAY_ADDRESS if set). Prints
token ids and logprobs as JSON, the scheduler the engine ran (the engine core
runs in this process) and, in "ray" mode, what each worker reports about itself
(that it is a Ray actor, with the medha patches in effect, and its cores).

Manual run against `ray start --head --node-ip-address 127.0.0.1 --port 6391
--num-cpus 2` (Ray 2.60 clusters use token auth: clients need RAY_AUTH_MODE=token):
    RAY_AUTH_MODE=token RAY_ADDRESS=<head ip>:6391 VLLM_CPU_OMP_THREADS_BIND='0|1' \
        python tests/e2e/ray_pp_run.py MODEL ray
"""

import json
import os
import sys
import time

PROMPT_LENS = [2000, 37, 300]


def worker_facts(worker) -> dict:
    """Runs inside each worker (collective_rpc)."""
    import os

    import ray

    from vllm.platforms import current_platform
    from vllm.v1.executor import ray_executor_v2
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    ctx = ray.get_runtime_context()
    return {
        "rank": worker.rank,
        "pid": os.getpid(),
        "actor_id": ctx.get_actor_id(),
        "actor_name": ctx.get_actor_name() if ctx.get_actor_id() else None,
        "worker_proc_cls": ray_executor_v2.RayWorkerProc.__name__,
        "ray_device_key": current_platform.ray_device_key,
        "cpu_pp_patched": getattr(CPUModelRunner.sync_and_gather_intermediate_tensors,
                                  "__medha_patched__", False),
        "affinity": sorted(os.sched_getaffinity(0)),
    }


if __name__ == "__main__":
    model, mode = sys.argv[1], sys.argv[2]
    t0 = time.time()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from exactness_common import scheduler_facts

    kwargs = dict(model=model, dtype="float32", max_model_len=4096, seed=0,
                  enforce_eager=True, enable_prefix_caching=False,
                  max_num_batched_tokens=256, max_num_seqs=8)
    if mode == "ray":
        kwargs.update(scheduler_cls="medha_vllm.scheduler.MedhaScheduler",
                      additional_config={"medha": {"profile": False}})
        import ray

        if os.environ.get("RAY_ADDRESS"):
            # A cluster started outside, e.g. `ray start --head --node-ip-address
            # 127.0.0.1` (manual runs).
            ray.init()
        else:
            # One-node cluster on loopback, owned by this process (Ray resolves
            # 127.0.0.1 to the host's own routable address); the engine-core
            # process vLLM starts connects to it through RAY_ADDRESS.
            ray.init(_node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False,
                     object_store_memory=128 * 1024 * 1024,
                     _temp_dir=os.environ.get("MEDHA_RAY_TMPDIR"))
            os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        # worker_facts travels to the workers pickled (collective_rpc of a function).
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        kwargs.update(pipeline_parallel_size=2, distributed_executor_backend="ray")
    else:
        kwargs.update(pipeline_parallel_size=1)

    from vllm import LLM, SamplingParams

    llm = LLM(**kwargs)
    t_ready = time.time()
    prompts = [{"prompt_token_ids": [(i * 7919 + k * 104729) % 30000 + 10 for k in range(n)]}
               for i, n in enumerate(PROMPT_LENS)]
    sp = SamplingParams(max_tokens=8, temperature=0.0, logprobs=1, seed=0)
    outs = llm.generate(prompts, sp)
    result = [{"tokens": list(o.outputs[0].token_ids),
               "logprobs": [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs,
                                                            o.outputs[0].token_ids)]}
              for o in outs]
    facts = llm.collective_rpc(worker_facts) if mode == "ray" else []
    print("RESULT " + json.dumps({"outputs": result, "workers": facts,
                                  "engine": scheduler_facts(llm),
                                  "startup_s": t_ready - t0,
                                  "generate_s": time.time() - t_ready}), flush=True)
    del llm
    if mode == "ray":
        ray.shutdown()
