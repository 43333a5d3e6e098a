"""Medha's Prometheus series (`medha:` prefix), next to vLLM's own.

The numbers live in the engine-core process (the scheduler), while `/metrics`
is served by the API-server process. NOTE(medha): vLLM's SchedulerStats is a
fixed msgspec-decoded dataclass (extra fields are dropped between processes),
so the scheduler publishes a typed snapshot (MedhaSnapshot, JSON, atomically
replaced about once a second) into a per-host folder, and the stat-logger
plugin (`vllm.stat_logger_plugins` entry point) registers a Prometheus
collector in the API server that reads the snapshots of its own engine cores
(files named after the parent pid) at scrape time.
"""

from __future__ import annotations

import bisect
import glob
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

from medha_vllm.policy.predictor import ape, median

CHUNK_BUCKETS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
SLACK_BUCKETS = [-10.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0]
TIME_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0]
GROUP_BUCKETS = [1, 2, 4, 8, 16, 32, 64]


def metrics_dir() -> str:
    return os.environ.get("MEDHA_METRICS_DIR") or os.path.join(
        tempfile.gettempdir(), f"medha-metrics-{os.getuid()}")


@dataclass
class Histogram:
    # Upper bounds (le) of the finite buckets; +Inf is implicit.
    bounds: list[float]
    # Non-cumulative counts, len(bounds) + 1 (last is +Inf).
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.total += v


@dataclass
class MedhaSnapshot:
    # Chosen prefill chunk sizes (tokens).
    chunk_size: Histogram = field(default_factory=lambda: Histogram(CHUNK_BUCKETS))
    # Relative slack (rho) of the most urgent prefill each iteration.
    relative_slack: Histogram = field(default_factory=lambda: Histogram(SLACK_BUCKETS))
    # Measured iteration time (s).
    iteration_time: Histogram = field(default_factory=lambda: Histogram(TIME_BUCKETS))
    # Preemptions by kind: "pause" (between chunks, KV kept), "recompute" (KV freed).
    preemptions: dict[str, int] = field(default_factory=lambda: {"pause": 0, "recompute": 0})
    # Requests that missed a deadline, by the kind of their first miss.
    deadline_misses: dict[str, int] = field(default_factory=lambda: {"ttft": 0, "tbt": 0})
    # Median absolute percentage error of live predictions (recent iterations).
    predictor_live_error: float = float("nan")
    # Held-out median APE of the start-up profile.
    predictor_profile_error: float = float("nan")
    # Configured iteration budget (s).
    target_batch_time_s: float = 0.0
    # Requests the engine finished because they were aborted (client
    # disconnects, API aborts), start-up profile requests excluded.
    aborted_requests: int = 0
    # Requests whose declared TTFT deadline (vllm_xargs) was below the client
    # floor and was raised to it (config: min_request_deadline_s).
    floored_deadlines: int = 0
    # Non-empty batches dispatched while another was in flight (async
    # scheduling or pipeline stages overlapping batches).
    overlapped_batches: int = 0
    # Iterations in which a long prefill sat out for a short prefill's first
    # token (first-token yield, policy/batching.py).
    first_token_yields: int = 0
    # KV-cache parallelism: per finished request, the groups its KV cache spanned.
    kvp_groups_per_request: Histogram = field(default_factory=lambda: Histogram(GROUP_BUCKETS))


class MedhaMetricsRecorder:
    """Engine-core side: accumulate, then publish a snapshot about once a second."""

    def __init__(self, target_s: float, flush_interval_s: float = 1.0) -> None:
        self.snap = MedhaSnapshot(target_batch_time_s=target_s)
        self._errors: list[float] = []
        self._missed: set[str] = set()
        self._floored: set[str] = set()
        self._interval = flush_interval_s
        self._last_flush = 0.0
        self.path = os.path.join(metrics_dir(), f"engine-{os.getppid()}-{os.getpid()}.json")

    def observe_chunk(self, tokens: int) -> None:
        self.snap.chunk_size.observe(tokens)

    def observe_slack(self, rho: float) -> None:
        self.snap.relative_slack.observe(rho)

    def observe_iteration(self, measured: float, predicted: float) -> None:
        self.snap.iteration_time.observe(measured)
        self._errors.append(ape(predicted, measured))
        if len(self._errors) > 256:
            del self._errors[:128]

    def count_preemption(self, kind: str) -> None:
        self.snap.preemptions[kind] = self.snap.preemptions.get(kind, 0) + 1

    def count_abort(self) -> None:
        self.snap.aborted_requests += 1

    def count_overlapped_batch(self) -> None:
        self.snap.overlapped_batches += 1

    def count_first_token_yield(self) -> None:
        self.snap.first_token_yields += 1

    def observe_kvp_groups(self, groups: int) -> None:
        self.snap.kvp_groups_per_request.observe(groups)

    def count_floored_deadline(self, req_id: str) -> None:
        if req_id in self._floored:
            return  # slack states are rebuilt when the predictor changes
        self._floored.add(req_id)
        self.snap.floored_deadlines += 1

    def count_miss(self, req_id: str, kind: str) -> None:
        if req_id in self._missed:
            return
        self._missed.add(req_id)
        self.snap.deadline_misses[kind] = self.snap.deadline_misses.get(kind, 0) + 1

    def forget(self, req_id: str) -> None:
        self._missed.discard(req_id)
        self._floored.discard(req_id)

    def set_profile_error(self, err: float | None) -> None:
        if err is not None:
            self.snap.predictor_profile_error = float(err)

    def maybe_flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_flush < self._interval:
            return
        self._last_flush = now
        self.snap.predictor_live_error = median(self._errors) if self._errors else float("nan")
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(asdict(self.snap), f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # metrics must never break serving


class KvpWorkerMetrics:
    """Worker side of KV-cache parallelism: time spent merging the groups'
    attention states (all-gather and merge) and bytes sent to the other
    groups, published about once a second as `kvp-<api pid>-<rank>.json`
    (the API server is the worker's grandparent: worker <- engine core <-
    API server). Counters lag serving by at most `interval_s`."""

    def __init__(self, rank: int, interval_s: float = 0.5) -> None:
        try:
            import psutil

            api_pid = psutil.Process(os.getppid()).ppid()
        except Exception:  # noqa: BLE001 - metrics must never break serving
            api_pid = 0
        self.path = os.path.join(metrics_dir(), f"kvp-{api_pid}-{rank}.json")
        self.rank = rank
        self._interval = interval_s
        self._last = 0.0

    def maybe_flush(self, runtime, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        data = {"rank": self.rank, "group": runtime.group, "merges": runtime.merges,
                "merge_seconds": runtime.merge_time_s, "sent_bytes": runtime.bytes_sent}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path + ".tmp", "w") as f:
                json.dump(data, f)
            os.replace(self.path + ".tmp", self.path)
        except OSError:
            pass


def read_snapshots(parent_pid: int | None = None, kind: str = "engine") -> list[dict]:
    pid = os.getpid() if parent_pid is None else parent_pid
    out = []
    for p in sorted(glob.glob(os.path.join(metrics_dir(), f"{kind}-{pid}-*.json"))):
        try:
            with open(p) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            continue
    return out


class _SnapshotCollector:
    """prometheus_client custom collector over the engine snapshots."""

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        snaps = read_snapshots()
        hist_specs = [("chunk_size", "medha:chunk_size_tokens", "Prefill chunk sizes chosen by Medha"),
                      ("relative_slack", "medha:relative_slack", "Relative slack (rho) of the most urgent prefill per iteration"),
                      ("iteration_time", "medha:iteration_time_seconds", "Measured engine iteration time"),
                      ("kvp_groups_per_request", "medha:kvp_groups_per_request",
                       "KV-cache parallel groups the KV cache of each finished request spanned")]
        for key, name, doc in hist_specs:
            h = HistogramMetricFamily(name, doc, labels=["engine"])
            for i, s in enumerate(snaps):
                d = s.get(key)
                if d is None:
                    continue
                cum, buckets = 0, []
                for b, c in zip(d["bounds"] + [float("inf")], d["counts"]):
                    cum += c
                    buckets.append((str(b) if b != float("inf") else "+Inf", cum))
                h.add_metric([str(i)], buckets, d["total"])
            yield h
        pre = CounterMetricFamily("medha:preemptions", "Medha preemptions by kind", labels=["engine", "kind"])
        miss = CounterMetricFamily("medha:deadline_misses", "Requests that missed a deadline, by kind of first miss", labels=["engine", "kind"])
        err = GaugeMetricFamily("medha:predictor_error_ratio", "Median absolute percentage error of the runtime predictor", labels=["engine", "source"])
        tgt = GaugeMetricFamily("medha:target_batch_time_seconds", "Iteration time budget", labels=["engine"])
        abo = CounterMetricFamily("medha:aborted_requests", "Requests the engine finished by abort "
                                  "(client disconnects, API aborts)", labels=["engine"])
        flo = CounterMetricFamily("medha:floored_deadlines", "Requests whose declared TTFT "
                                  "deadline was below the client floor and was raised to it",
                                  labels=["engine"])
        ovl = CounterMetricFamily("medha:overlapped_batches", "Batches dispatched while "
                                  "another was in flight (async scheduling, pipeline stages)",
                                  labels=["engine"])
        yld = CounterMetricFamily("medha:first_token_yields", "Iterations in which a long "
                                  "prefill sat out for a short prefill's first token",
                                  labels=["engine"])
        for i, s in enumerate(snaps):
            yld.add_metric([str(i)], s.get("first_token_yields", 0))
            flo.add_metric([str(i)], s.get("floored_deadlines", 0))
            ovl.add_metric([str(i)], s.get("overlapped_batches", 0))
            for kind, v in s["preemptions"].items():
                pre.add_metric([str(i), kind], v)
            for kind, v in s["deadline_misses"].items():
                miss.add_metric([str(i), kind], v)
            err.add_metric([str(i), "live"], s["predictor_live_error"])
            err.add_metric([str(i), "profile"], s["predictor_profile_error"])
            tgt.add_metric([str(i)], s["target_batch_time_s"])
            abo.add_metric([str(i)], s.get("aborted_requests", 0))
        yield from (pre, miss, err, tgt, abo, flo, ovl, yld)
        kvp = read_snapshots(kind="kvp")
        if kvp:
            specs = [("merge_seconds", "medha:kvp_merge_seconds", "Time each KVP worker spent "
                      "merging the groups' attention states (all-gather and LSE merge)"),
                     ("merges", "medha:kvp_merges", "Attention-state merges (one per layer and step)"),
                     ("sent_bytes", "medha:kvp_sent_bytes", "Bytes each KVP worker sent to "
                      "the other groups (proportional to query tokens, not context)")]
            for key, name, doc in specs:
                c = CounterMetricFamily(name, doc, labels=["rank", "group"])
                for k in kvp:
                    c.add_metric([str(k["rank"]), str(k["group"])], k[key])
                yield c


_collector_registered = False


def register_collector() -> None:
    global _collector_registered
    if _collector_registered:
        return
    from prometheus_client import REGISTRY

    REGISTRY.register(_SnapshotCollector())
    _collector_registered = True


def _stat_logger_base():
    from vllm.v1.metrics.loggers import StatLoggerBase

    return StatLoggerBase


class MedhaStatLogger(_stat_logger_base()):
    """vLLM stat-logger plugin: only registers the `medha:` collector."""

    def __init__(self, vllm_config, engine_index: int = 0) -> None:
        register_collector()

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        pass

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass
