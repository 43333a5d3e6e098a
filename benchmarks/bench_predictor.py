"""Runtime-predictor accuracy (`make bench-predictor`): starts `vllm serve
<synthetic> --scheduler medha` with an empty profile cache (so it profiles at
start-up), reports the profile's held-out error, then replays a long/short mix
and reports the error of live predictions (each made before its iteration
ran, so held out by construction). Writes benchmarks/results/predictor.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import RESULTS, machine, write_json  # noqa: E402

from benchmarks.harness.launch import VllmServer  # noqa: E402
from benchmarks.harness.loadgen import replay  # noqa: E402
from benchmarks.harness.models import build_synthetic  # noqa: E402
from benchmarks.harness.workload import WorkloadSpec, build_workload, default_trace_path  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--long-tokens", type=int, default=32000)
    ap.add_argument("--num-short", type=int, default=30)
    ap.add_argument("--time-scale", type=float, default=4.0)
    ap.add_argument("--model", default=None, help="model folder (default: built-in synthetic)")
    a = ap.parse_args(argv)
    model = a.model or str(build_synthetic())
    prof_dir = tempfile.mkdtemp(prefix="medha-prof-")
    args = ["--scheduler", "medha", "--max-model-len", str(a.long_tokens + 1024),
            "--medha-profile-dir", prof_dir]
    t0 = time.time()
    log = RESULTS / "logs" / "predictor.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with VllmServer(model, args, served_name="model", log_path=str(log)) as srv:
        startup = time.time() - t0
        spec = WorkloadSpec(trace=str(default_trace_path()), num_short=a.num_short, trace_offset_s=900,
                            time_scale=a.time_scale, max_prompt_tokens=1024, max_output_tokens=32,
                            long_requests=[(0.5, a.long_tokens, 8)])
        asyncio.run(replay(srv.base_url, "model", build_workload(spec, nonce=int(t0)), label="predictor"))
        time.sleep(1.5)
        text = urllib.request.urlopen(srv.base_url + "/metrics").read().decode()
    profile = json.loads(next(Path(prof_dir).glob("*.json")).read_text())
    st = profile["stats"]
    live = float(re.search(r'medha:predictor_error_ratio{engine="0",source="live"} (\S+)', text).group(1))
    iters = float(re.search(r'medha:iteration_time_seconds_count{engine="0"} (\S+)', text).group(1))
    out = {
        "model": model, "profile_key": profile["key"], "predictor": profile["predictor"],
        "profile_seconds": st["profile_seconds"], "profile_num_samples": st["num_samples"],
        "heldout_median_ape": st["heldout_median_ape"], "heldout_p90_ape": st["heldout_p90_ape"],
        "num_heldout": st["num_heldout"],
        "live_median_ape_recent": live, "live_iterations": iters,
        "server_startup_s_including_profile": startup,
        "targets": {"heldout_median_ape": "<= 0.10", "profile_seconds": "< 60"},
        "machine": machine(), "workload": spec.describe(),
        "command": "python benchmarks/bench_predictor.py " + " ".join(argv or sys.argv[1:]),
    }
    print(f"profile: {st['num_samples']} iterations in {st['profile_seconds']:.1f} s; held-out median "
          f"APE {100 * st['heldout_median_ape']:.1f}% (p90 {100 * st['heldout_p90_ape']:.1f}%, "
          f"{st['num_heldout']} batches)")
    print(f"live: median APE {100 * live:.1f}% over recent iterations ({iters:.0f} iterations)")
    print(f"wrote {write_json('predictor.json', out)}")


if __name__ == "__main__":
    main()
