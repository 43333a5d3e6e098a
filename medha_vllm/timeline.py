"""Stage timeline: what each pipeline stage executed and when, as a Chrome trace.

Enabled with `--medha-timeline-path PATH` (or `additional_config
{"medha": {"timeline_path": PATH}}`, which also works with vLLM's own
scheduler). Every worker appends one complete event ("ph": "X") per forward
pass to PATH, in the Trace Event Format's JSON-array form; open the file in
https://ui.perfetto.dev or chrome://tracing. Rows are "stage <pp rank>"
(process) x "tp <tp rank>" (thread).

NOTE(medha): several worker processes write the same file. It is created with
its "[" header in one step (a hard link of a filled private file), and each
event is one `os.write` of a single line on an O_APPEND descriptor, which the
kernel keeps whole. The array is left unterminated, which the format allows
("the closing ] is optional") precisely so that a trace can be appended to
until the process dies. `load_events()` reads such a file;
`python -m medha_vllm.timeline PATH` prints per-stage utilisation.

A span starts when the stage has its inputs (the first stage: when
execute_model is called; later stages: when the hidden states from the
previous stage have arrived) and ends when its forward pass returns (the last
stage: when sampling returns), so the time a stage waits for its predecessor
is idle time, not busy time.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable


def timeline_path_of(vllm_config: Any) -> str | None:
    extra = getattr(vllm_config, "additional_config", None) or {}
    section = extra.get("medha") if isinstance(extra, dict) else None
    if isinstance(section, dict) and section.get("timeline_path"):
        return str(section["timeline_path"])
    return None


class StageRecorder:
    """Per-worker recorder. Pure bookkeeping: the worker hook (patches/
    stage_timeline.py) calls begin/inputs_ready/end around each forward pass."""

    def __init__(self, path: str, pp_rank: int, tp_rank: int, pp_size: int) -> None:
        self.path = path
        self.pp_rank, self.tp_rank, self.pp_size = pp_rank, tp_rank, pp_size
        self._local = threading.local()
        _create_with_header(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        # The last stage's pass ends when sampling returns, not execute_model.
        self.is_last = pp_rank == pp_size - 1
        self._emit({"name": "process_name", "ph": "M", "pid": pp_rank, "tid": tp_rank,
                    "args": {"name": f"stage {pp_rank}"}})
        self._emit({"name": "thread_name", "ph": "M", "pid": pp_rank, "tid": tp_rank,
                    "args": {"name": f"tp {tp_rank}"}})

    def begin(self, reqs: dict[str, dict]) -> None:
        self._local.cur = {"t0": time.time(), "ready": None, "reqs": reqs}

    def inputs_ready(self) -> None:
        cur = getattr(self._local, "cur", None)
        if cur is not None and cur["ready"] is None:
            cur["ready"] = time.time()

    def end(self, phase: str = "forward") -> None:
        cur = getattr(self._local, "cur", None)
        if cur is None:
            return
        self._local.cur = None
        t1 = time.time()
        t0 = cur["ready"] or cur["t0"]
        reqs = cur["reqs"]
        self._emit({"name": describe(reqs), "cat": phase, "ph": "X", "pid": self.pp_rank,
                    "tid": self.tp_rank, "ts": round(t0 * 1e6, 1),
                    "dur": round(max(t1 - t0, 0.0) * 1e6, 1),
                    "args": {"reqs": reqs, "waited_us": round((t0 - cur["t0"]) * 1e6, 1)}})

    def _emit(self, event: dict) -> None:
        os.write(self._fd, (json.dumps(event, separators=(",", ":")) + ",\n").encode())


def _create_with_header(path: str) -> None:
    """Create `path` holding "[\n" unless it exists, atomically: every stage
    opens the file at the same moment, and one that found it created but still
    empty would append its events before the header, which the creator then
    wrote over them at offset 0. The header is written to a private file that
    is then hard-linked into place (link fails if the path exists)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists():
        return
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"[\n")
    finally:
        os.close(fd)
    try:
        os.link(tmp, p)
    except FileExistsError:
        pass
    except OSError:
        # A file system without hard links: rename is atomic too, but would
        # replace a file another stage has created meanwhile, so only if
        # there still is none (the window is a system call wide).
        if not p.exists():
            os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def describe(reqs: dict[str, dict]) -> str:
    """Event name: the biggest prefill chunk, plus how many decodes ride along."""
    chunks = [(v["n"], rid) for rid, v in reqs.items() if v.get("kind") == "prefill"]
    decodes = sum(1 for v in reqs.values() if v.get("kind") != "prefill")
    parts = []
    if chunks:
        n, rid = max(chunks)
        start = reqs[rid].get("start")
        parts.append(f"{rid} [{start}:{start + n}]" if start is not None else f"{rid} +{n}")
        if len(chunks) > 1:
            parts.append(f"+{len(chunks) - 1} chunks")
    if decodes:
        parts.append(f"{decodes} decodes")
    return ", ".join(parts) or "empty"


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class Span:
    stage: int
    start: float  # seconds (wall clock)
    end: float
    reqs: dict

    def has_prefill_of(self, rid: str) -> bool:
        v = self.reqs.get(rid)
        return v is not None and v.get("kind") == "prefill"


def load_events(path: str | os.PathLike) -> list[dict]:
    text = Path(path).read_text().strip()
    if text.startswith("{"):
        return json.loads(text)["traceEvents"]
    body = text.lstrip("[").rstrip().rstrip("]").rstrip().rstrip(",")
    return json.loads("[" + body + "]") if body else []


def load_spans(path: str | os.PathLike) -> list[Span]:
    spans = [Span(e["pid"], e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6, e["args"]["reqs"])
             for e in load_events(path) if e.get("ph") == "X" and e.get("cat") == "forward"]
    return sorted(spans, key=lambda s: s.start)


def _union(intervals: Iterable[tuple[float, float]]) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def prefill_tokens_by_request(spans: list[Span], stage: int = 0) -> dict[str, int]:
    """req_id -> prefill tokens it had in forward passes of `stage`."""
    totals: dict[str, int] = {}
    for s in spans:
        if s.stage == stage:
            for rid, v in s.reqs.items():
                if v.get("kind") == "prefill":
                    totals[rid] = totals.get(rid, 0) + v["n"]
    return totals


def prefill_window(spans: list[Span], rid: str) -> tuple[float, float]:
    """From the first to the last forward pass holding a prefill chunk of rid."""
    own = [s for s in spans if s.has_prefill_of(rid)]
    if not own:
        raise ValueError(f"no prefill chunk of {rid!r} in the timeline")
    return min(s.start for s in own), max(s.end for s in own)


def stage_utilisation(spans: list[Span], window: tuple[float, float] | None = None
                      ) -> dict[int, float]:
    """Busy fraction of each stage within window (default: the whole trace)."""
    if not spans:
        return {}
    lo, hi = window or (min(s.start for s in spans), max(s.end for s in spans))
    out = {}
    for stage in sorted({s.stage for s in spans}):
        busy = _union((max(s.start, lo), min(s.end, hi)) for s in spans
                      if s.stage == stage and s.end > lo and s.start < hi)
        out[stage] = busy / (hi - lo) if hi > lo else 0.0
    return out


def overlapping_chunks(spans: list[Span], rid: str) -> list[tuple[Span, Span]]:
    """Pairs of spans on different stages, both holding a prefill chunk of rid,
    that ran at overlapping times (different chunks of one prompt in flight at once)."""
    own = [s for s in spans if s.has_prefill_of(rid)]
    pairs = []
    for i, a in enumerate(own):
        for b in own[i + 1:]:
            if b.start >= a.end:
                break
            if a.stage != b.stage and a.reqs[rid].get("start") != b.reqs[rid].get("start"):
                pairs.append((a, b))
    return pairs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Summarise a medha stage timeline")
    ap.add_argument("path")
    ap.add_argument("--request", help="utilisation within this request's prefill window")
    args = ap.parse_args(argv)
    spans = load_spans(args.path)
    window = prefill_window(spans, args.request) if args.request else None
    util = stage_utilisation(spans, window)
    print(json.dumps({"spans": len(spans), "stage_utilisation": util,
                      "mean_utilisation": sum(util.values()) / max(len(util), 1)}, indent=1))


if __name__ == "__main__":
    main()
