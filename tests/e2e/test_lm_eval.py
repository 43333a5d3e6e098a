"""lm-eval harness parity: the same multiple-choice (log-likelihood) task,
scored by `lm_eval --model local-completions` against `vllm serve` with and
without `--scheduler medha`, and by lm-eval's `vllm` model type with Medha's
scheduler through its Python API (`simple_evaluate`), on the real SmolLM2 in
float32. Accuracy is identical and every per-choice log-likelihood agrees
within the exactness tolerance (tests/e2e/exactness_common.py).

The task (tests/e2e/lm_eval_task) ships with the tests; Medha's chunks are
forced to 8 tokens so every prompt's log-probabilities come from several
chunks, and the test shows the Medha scheduler chunked them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from exactness_common import metric_sum

from benchmarks.harness.launch import VllmServer

pytestmark = pytest.mark.e2e
MODEL = "smollm2"
TASK_DIR = Path(__file__).with_name("lm_eval_task")
LOGPROB_TOL = 2e-4
COMMON = ["--dtype", "float32", "--max-model-len", "512", "--seed", "0", "--enforce-eager"]
MEDHA = ["--scheduler", "medha", "--medha-min-chunk-size", "8", "--medha-max-chunk-size", "8",
         "--medha-profile", "false", "--medha-target-batch-time-s", "0.2"]


@pytest.fixture(scope="module")
def task_path(tmp_path_factory) -> Path:
    """The shipped task, its data file given as an absolute path."""
    out = tmp_path_factory.mktemp("lm_eval_task")
    shutil.copy(TASK_DIR / "medha_mc.jsonl", out)
    yaml = (TASK_DIR / "medha_mc.yaml").read_text().replace(
        "test: medha_mc.jsonl", f"test: {out / 'medha_mc.jsonl'}")
    (out / "medha_mc.yaml").write_text(yaml)
    return out


def lm_eval_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("OPENAI_API_KEY", None)
    return env


def run_local_completions(base_url: str, tokenizer: str, task_path: Path, out: Path) -> dict:
    exe = Path(sys.executable).with_name("lm_eval")
    cmd = [str(exe), "run", "--model", "local-completions", "--tasks", "medha_mc",
           "--include_path", str(task_path), "--output_path", str(out), "--log_samples",
           "--model_args", f"model={MODEL},base_url={base_url}/v1/completions,"
           f"tokenizer={tokenizer},tokenizer_backend=huggingface,num_concurrent=4,"
           "max_retries=1,tokenized_requests=True"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=lm_eval_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return read_results(out)


def read_results(out: Path) -> dict:
    """{'acc': ..., 'acc_norm': ..., 'loglik': {(doc_id, choice): ll}}."""
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["medha_mc"]
    loglik = {}
    for line in next(out.rglob("samples_medha_mc_*.jsonl")).read_text().splitlines():
        s = json.loads(line)
        for k, resp in enumerate(s["filtered_resps"]):
            loglik[(s["doc_id"], k)] = float(resp[0])
    return {"acc": results["acc,none"], "acc_norm": results["acc_norm,none"], "loglik": loglik}


def assert_parity(ref: dict, got: dict) -> None:
    assert len(ref["loglik"]) == 96 and ref["loglik"].keys() == got["loglik"].keys()
    assert got["acc"] == ref["acc"] and got["acc_norm"] == ref["acc_norm"]
    worst = max(abs(ref["loglik"][k] - got["loglik"][k]) for k in ref["loglik"])
    assert worst <= LOGPROB_TOL, f"log-likelihoods differ by up to {worst:.2e}"


@pytest.fixture(scope="module")
def plain_result(smollm2_path, task_path, tmp_path_factory) -> dict:
    logs = tmp_path_factory.mktemp("lm_eval_plain")
    with VllmServer(smollm2_path, COMMON, served_name=MODEL,
                    log_path=str(logs / "server.log")) as srv:
        return run_local_completions(srv.base_url, smollm2_path, task_path, logs / "out")


def test_local_completions_parity_with_plain_vllm(smollm2_path, task_path, plain_result,
                                                  tmp_path):
    # The model really answers the task (a broken scorer would sit near 0.25).
    assert plain_result["acc"] >= 0.5, plain_result["acc"]
    with VllmServer(smollm2_path, COMMON + MEDHA, served_name=MODEL,
                    log_path=str(tmp_path / "server.log")) as srv:
        got = run_local_completions(srv.base_url, smollm2_path, task_path, tmp_path / "out")
        time.sleep(1.5)  # metrics snapshots are published about once a second
        text = urllib.request.urlopen(srv.base_url + "/metrics", timeout=10).read().decode()
    assert_parity(plain_result, got)
    # Medha scheduled it, in 8-token chunks: more chunks than the 96 requests
    # (prompts are 9-30 tokens; prefix caching serves some shared question
    # blocks), so log-probabilities crossed chunk boundaries.
    log = (tmp_path / "server.log").read_text()
    assert re.search(r"Medha scheduler: target batch time", log), log[-2000:]
    chunks = metric_sum(text, "medha:chunk_size_tokens_count")
    assert chunks > 96, chunks
    le16 = sum(float(m) for m in re.findall(r'medha:chunk_size_tokens_bucket\{engine="\d+",le="16"\} (\S+)', text))
    assert le16 == chunks  # no chunk above 16 tokens (the cap is 8)


def test_vllm_model_type_with_medha_scheduler_python_api(smollm2_path, task_path, plain_result,
                                                         tmp_path):
    script = Path(__file__).with_name("lm_eval_vllm_run.py")
    r = subprocess.run([sys.executable, str(script), smollm2_path, str(task_path),
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=900,
                       env=dict(lm_eval_env(), VLLM_ENABLE_V1_MULTIPROCESSING="0"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))
    engine = json.loads(line[len("RESULT "):])
    assert engine["scheduler_cls"] == "medha_vllm.scheduler.MedhaScheduler"
    assert engine["medha_chunks"] > 96, engine
    assert_parity(plain_result, read_results(tmp_path / "out"))
