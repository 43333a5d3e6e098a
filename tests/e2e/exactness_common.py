"""Helpers shared by the exactness tests (imported by test modules in this
folder, which pytest puts on sys.path)."""

from __future__ import annotations

# Token ids must be identical; log-probabilities may differ by float reduction
# order only (chunked prefill sums attention over the context in other blocks
# than one-shot prefill), so they must agree to 2e-4 absolute.
LOGPROB_ATOL = 2e-4

def words(i: int, n: int) -> str:
    return " ".join(f"item{(i * 31 + k) % 997}" for k in range(n))


def assert_same(plain: list[dict], other: list[dict]) -> None:
    assert len(plain) == len(other)
    for i, (a, b) in enumerate(zip(plain, other)):
        assert a["tokens"] == b["tokens"], f"request {i}: tokens differ"
        for x, y in zip(a["logprobs"], b["logprobs"]):
            assert abs(x - y) <= LOGPROB_ATOL, f"request {i}: logprob {x} vs {y}"


def scheduler_facts(llm) -> dict:
    """Which scheduler the engine of `llm` (an in-process `LLM`, i.e. with
    VLLM_ENABLE_V1_MULTIPROCESSING=0) really runs, and Medha's own counters:
    proof that the Medha path ran, not only that it was asked for."""
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    cls = type(sched)
    facts = {"scheduler_cls": f"{cls.__module__}.{cls.__qualname__}"}
    metrics = getattr(sched, "metrics", None)
    if metrics is not None:
        facts["medha_chunks"] = sum(metrics.snap.chunk_size.counts)
        facts["medha_pauses"] = metrics.snap.preemptions["pause"]
    return facts


def read_metrics(base_url: str) -> str:
    """The server's /metrics text, after the next snapshot (Medha publishes
    its metrics about once a second)."""
    import time
    import urllib.request

    time.sleep(1.5)
    return urllib.request.urlopen(base_url + "/metrics").read().decode()


def metric_sum(text: str, name: str) -> float:
    """Sum of series `name` over its labels in Prometheus text; fails if absent."""
    import re

    vals = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    assert vals, f"{name} not in /metrics"
    return sum(vals)
