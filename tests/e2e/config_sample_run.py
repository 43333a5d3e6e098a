"""Run by test_config_sample.py in a subprocess: the synthetic model through
`LLM` with Medha and the given options (JSON); prints the generated token ids
and which scheduler ran (the engine core runs in this process)."""

import json
import os
import sys

if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from exactness_common import scheduler_facts
    from vllm import LLM, SamplingParams

    from medha_vllm import SCHEDULER_CLS

    model, opts = sys.argv[1], json.loads(sys.argv[2])
    llm = LLM(model=model, max_model_len=4096, seed=0, enforce_eager=True,
              scheduler_cls=SCHEDULER_CLS, additional_config={"medha": opts})
    prompts = [{"prompt_token_ids": [(i * 7919 + k * 104729) % 40000 + 10 for k in range(n)]}
               for i, n in enumerate([1500, 40, 600])]
    outs = llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    print("RESULT " + json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in outs],
                                  "engine": scheduler_facts(llm)}), flush=True)
