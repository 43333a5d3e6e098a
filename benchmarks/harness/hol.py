"""The head-of-line experiment, shared by `make demo` and `make bench-hol`.

Short requests from the Azure conversation trace (time-scaled, lengths
capped) mixed with a long prompt, replayed by one light asyncio client against
several servers one after the other: same seeded workload (same token ids:
each server starts with an empty prefix cache), same machine, model and
settings; only the scheduler differs.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness.launch import VllmServer
from benchmarks.harness.loadgen import replay, summarize
from benchmarks.harness.workload import WorkItem, WorkloadSpec, build_workload, read_trace

SERVED_NAME = "model"


@dataclass
class HolConfig:
    model: str
    trace: str
    long_tokens: int = 64000
    long_arrival_s: float = 1.0
    long_output_tokens: int = 16
    num_short: int = 80
    window_s: float = 90.0
    trace_offset_s: float = 600.0
    max_prompt_tokens: int = 512
    max_output_tokens: int = 32
    seed: int = 0
    servers: tuple[str, ...] = ("plain", "plain-chunked", "medha", "idle")
    medha_args: list[str] = field(default_factory=list)
    # Extra `vllm serve` args for every server (e.g. ["-pp", "2"]).
    common_args: list[str] = field(default_factory=list)
    log_dir: Path = Path("/tmp/medha-hol-logs")

    def spec(self) -> WorkloadSpec:
        spec = WorkloadSpec(trace=self.trace, seed=self.seed, trace_offset_s=self.trace_offset_s,
                            num_short=self.num_short, max_prompt_tokens=self.max_prompt_tokens,
                            max_output_tokens=self.max_output_tokens,
                            long_requests=[(self.long_arrival_s, self.long_tokens, self.long_output_tokens)])
        rows = [r for r in read_trace(self.trace) if r[0] >= self.trace_offset_s][: self.num_short]
        span = rows[-1][0] - rows[0][0]
        spec.time_scale = self.window_s / span if span > 0 else 1.0
        return spec

    def server_args(self) -> dict[str, list[str]]:
        common = ["--max-model-len", str(self.long_tokens + self.long_output_tokens + 512),
                  "--seed", str(self.seed)] + list(self.common_args)
        medha = common + ["--scheduler", "medha"] + list(self.medha_args)
        # KV-cache parallelism: two groups, the long prompt's KV split between them.
        half = -(-(self.long_tokens + self.long_output_tokens + 512) // 2)
        shard = -(-half // 256) * 256
        return {"plain": common,
                "plain-chunked": common + ["--long-prefill-token-threshold", "512"],
                "medha": medha, "idle": medha,
                # vLLM's default on CUDA; on CPU kept on by patches/cpu_async_scheduling.py.
                "medha-async": medha + ["--async-scheduling"],
                # One core a worker: Medha on one worker, and KVP 2 on two.
                "medha-1core": medha,
                "medha-kvp2": medha + ["--medha-kv-parallel-size", "2",
                                       "--medha-kvp-max-tokens-per-group", str(shard)]}

    def server_cpus(self, name: str) -> list[int] | None:
        """Cores a server is pinned to (None: all). Medha on one worker gets
        one core, as each of KVP's two workers does."""
        if name == "medha-1core":
            import os

            return [min(os.sched_getaffinity(0))]
        return None


def run_server(name: str, args: list[str], cfg: HolConfig, items: list[WorkItem]):
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with VllmServer(cfg.model, args, served_name=SERVED_NAME, cpus=cfg.server_cpus(name),
                    log_path=str(cfg.log_dir / f"{name}.log")) as srv:
        startup = time.time() - t0
        # One warm-up request (not measured; its own token ids).
        warm = [WorkItem("warmup", 0.0, [7 + (k * 131) % 30000 for k in range(64)], 4, "warmup")]
        asyncio.run(replay(srv.base_url, SERVED_NAME, warm, progress=False))
        results = asyncio.run(replay(srv.base_url, SERVED_NAME, items, label=name))
    return results, startup


def run_hol(cfg: HolConfig) -> dict:
    spec = cfg.spec()
    items_all = build_workload(spec, nonce=int(time.time()))
    args = cfg.server_args()
    raw, texts, startup = {}, {}, {}
    for name in cfg.servers:
        items = [w for w in items_all if name != "idle" or w.kind == "short"]
        print(f"== {name}: {len(items)} requests; vllm serve <synthetic> {' '.join(args[name])}",
              flush=True)
        results, startup[name] = run_server(name, args[name], cfg, items)
        raw[name] = summarize(results)
        raw[name]["short_ttft_all_s"] = sorted(r.ttft_s for r in results if r.kind == "short")
        texts[name] = {r.req_id: r.text for r in results}
        if raw[name]["errors"]:
            print(f"   errors: {raw[name]['errors'][:3]}", flush=True)
    return report(cfg, spec, raw, texts, startup)


def _ratio(a, b):
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def medha_target_from_log(path: Path) -> float | None:
    """The budget the Medha server ran with: the last one it derived from
    its profile ("Medha: iteration budget"), else the one it started with."""
    if not path.exists():
        return None
    derived = start = None
    for line in path.read_text(errors="replace").splitlines():
        if "Medha: iteration budget" in line:
            derived = float(line.split("iteration budget")[1].split()[0])
        elif "Medha scheduler: target batch time" in line and start is None:
            start = float(line.split("target batch time")[1].split()[0])
    return derived if derived is not None else start


def report(cfg: HolConfig, spec: WorkloadSpec, raw: dict, texts: dict, startup: dict) -> dict:
    out: dict = {"workload": {**spec.describe(), "window_s": cfg.window_s,
                              "client": "one asyncio process on the same machine as the server"},
                 "servers": raw, "server_startup_s": startup}
    p, c, m, i = (raw.get(k) for k in ("plain", "plain-chunked", "medha", "idle"))
    if m:
        target = medha_target_from_log(cfg.log_dir / "medha.log")
        out["medha_target_batch_time_s"] = target
        out["tbt_p99_ms"] = m["tbt_p99_ms"]
        if target:
            out["tbt_p99_over_target"] = m["tbt_p99_ms"] / (1000 * target)
        if p:
            out["short_ttft_p50_speedup"] = _ratio(p["short_ttft_p50_s"], m["short_ttft_p50_s"])
            out["short_ttft_p90_speedup"] = _ratio(p["short_ttft_p90_s"], m["short_ttft_p90_s"])
            out["long_ttft_ratio"] = _ratio(m["long_ttft_mean_s"], p["long_ttft_mean_s"])
        if c:
            out["short_ttft_p50_speedup_vs_chunked"] = _ratio(c["short_ttft_p50_s"], m["short_ttft_p50_s"])
            out["tbt_p99_speedup_vs_chunked"] = _ratio(c["tbt_p99_ms"], m["tbt_p99_ms"])
            out["long_ttft_ratio_vs_chunked"] = _ratio(m["long_ttft_mean_s"], c["long_ttft_mean_s"])
        if i:
            out["short_isolation_p50"] = _ratio(m["short_ttft_p50_s"], i["short_ttft_p50_s"])
        a = raw.get("medha-async")
        if a:  # async scheduling over synchronous Medha (< 1: async is faster)
            out["async_tbt_p50_ratio"] = _ratio(a["tbt_p50_ms"], m["tbt_p50_ms"])
            out["async_tbt_p99_ratio"] = _ratio(a["tbt_p99_ms"], m["tbt_p99_ms"])
            out["async_short_ttft_p50_ratio"] = _ratio(a["short_ttft_p50_s"], m["short_ttft_p50_s"])
            out["async_short_ttft_p90_ratio"] = _ratio(a["short_ttft_p90_s"], m["short_ttft_p90_s"])
            out["async_long_ttft_ratio"] = _ratio(a["long_ttft_mean_s"], m["long_ttft_mean_s"])
    one, kvp = raw.get("medha-1core"), raw.get("medha-kvp2")
    if one and kvp:  # KVP 2 over Medha on one worker, one core each (< 1: KVP is faster)
        for k in ("short_ttft_p50_s", "short_ttft_p90_s", "short_ttft_p99_s", "long_ttft_mean_s",
                  "tbt_p50_ms", "tbt_p99_ms"):
            out[f"kvp2_{k.removesuffix('_s').removesuffix('_ms')}_ratio"] = _ratio(kvp[k], one[k])
    ref_name = next((n for n in texts if n != "idle"), None)
    if ref_name:
        ref = texts[ref_name]
        agree = {n: sum(t.get(k) == v for k, v in ref.items() if k in t) / max(1, sum(k in t for k in ref))
                 for n, t in texts.items()}
        out["outputs_identical"] = all(v == 1.0 for v in agree.values())
        out["outputs_agreement"] = agree
    return out


def print_table(out: dict) -> None:
    print()
    print(f"{'server':15s} {'short TTFT P50':>15s} {'short TTFT P90':>15s} {'long TTFT':>10s} "
          f"{'TBT P99':>9s} {'errors':>6s}")
    for name, s in out["servers"].items():
        print(f"{name:15s} {s['short_ttft_p50_s']:14.2f}s {s['short_ttft_p90_s']:14.2f}s "
              f"{s['long_ttft_mean_s']:9.1f}s {s['tbt_p99_ms']:7.0f}ms {len(s['errors']):6d}")
    print()
    for k in ("short_ttft_p50_speedup", "short_ttft_p90_speedup", "short_ttft_p50_speedup_vs_chunked",
              "tbt_p99_speedup_vs_chunked", "tbt_p99_ms", "tbt_p99_over_target", "short_isolation_p50",
              "long_ttft_ratio", "long_ttft_ratio_vs_chunked", "async_tbt_p50_ratio",
              "async_tbt_p99_ratio", "async_short_ttft_p50_ratio", "async_short_ttft_p90_ratio",
              "async_long_ttft_ratio", "outputs_identical"):
        if k in out:
            v = out[k]
            print(f"  {k:36s} {v:.3g}" if isinstance(v, float) else f"  {k:36s} {v}")


def plot_cdf(out: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no CDF plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, s in out["servers"].items():
        xs = [x for x in s["short_ttft_all_s"] if not math.isnan(x)]
        if xs:
            ax.step(xs, [(k + 1) / len(xs) for k in range(len(xs))], where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("short-request TTFT (s, log scale)")
    ax.set_ylabel("CDF")
    ax.set_title("Short requests behind a long prefill")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
