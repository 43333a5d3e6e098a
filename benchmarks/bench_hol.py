"""Head-of-line benchmark (`make bench-hol`): the same seeded long/short mix
against plain vLLM, plain vLLM with --long-prefill-token-threshold 512, Medha,
and Medha with the short requests alone. Writes benchmarks/results/hol.json
and hol_ttft_cdf.png and prints a table. See medha_vllm/hol.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import RESULTS, machine, write_json  # noqa: E402

from benchmarks.harness.hol import HolConfig, plot_cdf, print_table, run_hol  # noqa: E402
from benchmarks.harness.models import build_synthetic  # noqa: E402
from benchmarks.harness.workload import default_trace_path  # noqa: E402

TARGETS = {"short_ttft_p50_speedup": ">= 30", "short_ttft_p90_speedup": ">= 100",
           "short_ttft_p50_speedup_vs_chunked": ">= 4", "tbt_p99_speedup_vs_chunked": ">= 4",
           "tbt_p99_over_target": "<= 1.5", "short_isolation_p50": "<= 2.0",
           "long_ttft_ratio": "<= 1.0", "long_ttft_ratio_vs_chunked": "<= 0.9",
           "outputs_identical": "true"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = HolConfig(model="", trace="")
    for f in ("long_tokens", "long_output_tokens", "num_short", "trace_offset_s", "window_s",
              "long_arrival_s", "max_prompt_tokens", "max_output_tokens", "seed"):
        ap.add_argument("--" + f.replace("_", "-"), type=type(getattr(d, f)), default=getattr(d, f))
    ap.add_argument("--servers", default=",".join(d.servers))
    ap.add_argument("--medha-args", default="", help="extra vllm serve args for medha/idle")
    ap.add_argument("--common-args", default="", help="extra vllm serve args for every server")
    # float32: Medha's promise of the same tokens as plain vLLM is made in float32 (in bfloat16 a
    # different chunking or kernel rounds differently: 80 of 81 outputs agreed in a bfloat16 run).
    ap.add_argument("--dtype", default="float32", help="--dtype of every server")
    ap.add_argument("--output", default="hol.json")
    a = ap.parse_args(argv)
    cfg = HolConfig(model=str(build_synthetic()), trace=str(default_trace_path()),
                    servers=tuple(a.servers.split(",")), medha_args=a.medha_args.split(),
                    common_args=["--dtype", a.dtype] + a.common_args.split(),
                    log_dir=RESULTS / "logs" / Path(a.output).stem,
                    **{f: getattr(a, f) for f in ("long_tokens", "long_output_tokens", "num_short",
                                                  "trace_offset_s", "window_s", "long_arrival_s",
                                                  "max_prompt_tokens", "max_output_tokens", "seed")})
    out = run_hol(cfg)
    out["machine"] = machine()
    out["targets"] = TARGETS
    out["command"] = "python benchmarks/bench_hol.py " + " ".join(argv or sys.argv[1:])
    print_table(out)
    path = write_json(a.output, out)
    plot_cdf(out, RESULTS / (Path(a.output).stem + "_ttft_cdf.png"))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
