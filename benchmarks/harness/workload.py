"""Seeded long/short workloads from the real request trace.

Short requests take their arrival times and lengths from
`benchmarks/traces/azure_llm_conv_2023.csv` (time-scaled, lengths capped); a few
long requests are mixed in. Prompts are random token ids with a per-run nonce
so that no two runs (or servers) share a prefix-cache hit.
Pure Python: no vllm import.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class WorkItem:
    req_id: str
    arrival_s: float          # offset from the start of the replay
    prompt_token_ids: list[int] = field(repr=False)
    output_tokens: int
    kind: str                  # "short" or "long"


@dataclass
class WorkloadSpec:
    trace: str
    seed: int = 0
    # Trace window: start offset (s, trace time) and number of short requests.
    trace_offset_s: float = 0.0
    num_short: int = 80
    # Replay time = trace time x time_scale (stretches arrivals to what 2 cores serve).
    time_scale: float = 1.0
    max_prompt_tokens: int = 1024
    max_output_tokens: int = 64
    min_output_tokens: int = 8
    # Long requests: (arrival offset s, prompt tokens, output tokens).
    long_requests: list[tuple[float, int, int]] = field(default_factory=list)
    vocab_size: int = 49152

    def describe(self) -> dict:
        d = asdict(self)
        d["trace"] = os.path.basename(self.trace)
        return d


TRACE = Path(__file__).resolve().parents[1] / "traces" / "azure_llm_conv_2023.csv"


def default_trace_path() -> Path:
    """The trace the project ships (benchmarks/traces), or $MEDHA_TRACE."""
    env = os.environ.get("MEDHA_TRACE")
    return Path(env) if env else TRACE


def read_trace(path: str | Path) -> list[tuple[float, int, int]]:
    with open(path) as f:
        return [(float(r["arrived_at"]), int(r["num_prefill_tokens"]), int(r["num_decode_tokens"]))
                for r in csv.DictReader(f)]


def build_workload(spec: WorkloadSpec, nonce: int) -> list[WorkItem]:
    """Same spec + seed -> same lengths and arrivals; `nonce` only changes the
    token ids (unique per run, so no prefix-cache hits across runs)."""
    rows = read_trace(spec.trace)
    window = [r for r in rows if r[0] >= spec.trace_offset_s][: spec.num_short]
    if not window:
        raise ValueError("trace window is empty")
    t0 = window[0][0]
    tok_rng = random.Random(hash((spec.seed, nonce)) & 0xFFFFFFFF)
    items: list[WorkItem] = []

    def prompt(n: int) -> list[int]:
        return [tok_rng.randrange(100, spec.vocab_size - 1) for _ in range(n)]

    for i, (t, p, d) in enumerate(window):
        items.append(WorkItem(f"short-{i}", (t - t0) * spec.time_scale,
                              prompt(max(4, min(p, spec.max_prompt_tokens))),
                              max(spec.min_output_tokens, min(d, spec.max_output_tokens)), "short"))
    for j, (t, p, d) in enumerate(spec.long_requests):
        items.append(WorkItem(f"long-{j}", t, prompt(p), d, "long"))
    items.sort(key=lambda w: w.arrival_s)
    return items
