"""Run by test_lm_eval.py in a subprocess: lm-eval's `vllm` model type with
Medha's scheduler, through lm-eval's Python API (`simple_evaluate`: its CLI
cannot pass `additional_config` as a dict), on the shipped task. Writes the
results and samples where the CLI would (EvaluationTracker) and prints the
scheduler the engine really ran (the engine core runs in this process:
VLLM_ENABLE_V1_MULTIPROCESSING=0)."""

import json
import os
import sys

if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from exactness_common import scheduler_facts
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.models.vllm_causallms import VLLM
    from lm_eval.tasks import TaskManager

    from medha_vllm import SCHEDULER_CLS

    model, task_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    # lm-eval's `vllm` model type; extra keyword arguments go to vllm.LLM.
    lm = VLLM(pretrained=model, dtype="float32", max_length=512, seed=0, batch_size=4,
              enforce_eager=True, scheduler_cls=SCHEDULER_CLS,
              additional_config={"medha": {"min_chunk_size": 8, "max_chunk_size": 8,
                                           "profile": False, "target_batch_time_s": 0.2}})
    results = simple_evaluate(model=lm, tasks=["medha_mc"],
                              task_manager=TaskManager(include_path=task_path), log_samples=True)
    samples = results.pop("samples")
    tracker = EvaluationTracker(output_path=out)
    tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results["configs"]:
        tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    print("RESULT " + json.dumps(scheduler_facts(lm.model)), flush=True)
