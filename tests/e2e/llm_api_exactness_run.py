"""Run by test_exactness.py in a subprocess: the same greedy requests through
the Python API (`LLM(..., scheduler_cls=...)`) with vLLM's scheduler and with
Medha (32-token chunks, its attention backend forced on), float32; prints token ids and logprobs as JSON,
with the scheduler class the engine really ran and Medha's counters (the
engine core runs in this process: VLLM_ENABLE_V1_MULTIPROCESSING=0)."""

import json
import os
import sys

if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from exactness_common import scheduler_facts
    from vllm import LLM, SamplingParams

    from medha_vllm import SCHEDULER_CLS

    model, which = sys.argv[1], sys.argv[2]
    kwargs = dict(model=model, dtype="float32", max_model_len=16384, seed=0,
                  enable_prefix_caching=False, enforce_eager=True)
    if which == "medha":
        kwargs.update(scheduler_cls=SCHEDULER_CLS, additional_config={"medha": {
            "min_chunk_size": 32, "max_chunk_size": 32, "profile": False,
            "attention_backend": "medha"}})
    llm = LLM(**kwargs)
    # Long prompts (hundreds of 32-token chunks, up to 15K tokens) mixed with short ones.
    prompts = [{"prompt_token_ids": [(i * 7919 + k * 104729) % 40000 + 10 for k in range(n)]}
               for i, n in enumerate([6000, 37, 2500, 400, 15000, 5])]
    sp = SamplingParams(max_tokens=12, temperature=0.0, logprobs=1, seed=0)
    outs = llm.generate(prompts, sp)
    result = [{"tokens": list(o.outputs[0].token_ids),
               "logprobs": [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]}
              for o in outs]
    from medha_vllm.attention.backend import CALLS

    engine = scheduler_facts(llm)
    # Attention forward calls (all layers) served by each kernel in this
    # process, where the worker runs too (uniprocess executor).
    engine["attention_calls"] = dict(CALLS)
    print("RESULT " + json.dumps({"outputs": result, "engine": engine}), flush=True)
