"""Start-up profiling of the served model on the served hardware.

NOTE(medha): profiling runs *as the engine's first iterations*, through the
scheduler itself: MedhaScheduler adds synthetic requests (ids prefixed
`medha-profile-`), dictates each iteration's exact batch (chunk sizes, context
lengths, number of decodes), times each iteration from schedule() to
update_from_output(), drops the synthetic outputs, and aborts the synthetic
requests at the end. No vLLM internals are patched and the real executor,
model runner and attention backend are what gets measured. Requests that
arrive meanwhile wait in the queue (at most `profile_time_budget_s`).

The fitted profile is cached on disk, keyed by model, dtype, hardware, layout,
token budget and vLLM version, so later starts skip profiling.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from medha_vllm.policy.predictor import BatchShape, LinearBatchPredictor, ape, median

PROFILE_PREFIX = "medha-profile-"
PROFILE_FORMAT = 2  # bump when the predictor's features change


def default_profile_dir() -> Path:
    base = os.environ.get("MEDHA_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "medha-vllm")
    return Path(base) / "profiles"


def hardware_id() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda:" + torch.cuda.get_device_name(0).replace(" ", "_")
    except Exception:  # pragma: no cover - torch always importable under vLLM
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu:{cpu}:{len(os.sched_getaffinity(0))}cores"


def profile_key(fields: dict) -> str:
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class BadProfile(ValueError):
    """A cached profile file exists but cannot be used (the reason)."""


def load_profile(path: Path) -> dict | None:
    """The cached profile at `path`, None if there is none; BadProfile if the
    file is there but unusable (unreadable, not JSON, wrong shape or format,
    missing keys, coefficients that are not finite numbers)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise BadProfile(f"unreadable ({type(e).__name__}: {e})") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise BadProfile(f"not JSON ({e})") from None
    if not isinstance(data, dict):
        raise BadProfile(f"not a JSON object but {type(data).__name__}")
    if data.get("format") != PROFILE_FORMAT:
        raise BadProfile(f"format {data.get('format')!r}, this version writes {PROFILE_FORMAT}")
    pred, stats = data.get("predictor"), data.get("stats")
    if not isinstance(pred, dict) or not isinstance(stats, dict):
        raise BadProfile("'predictor' and 'stats' must both be JSON objects")
    try:
        coef = LinearBatchPredictor.from_dict(pred).coef
    except (KeyError, TypeError, ValueError) as e:
        raise BadProfile(f"bad predictor ({type(e).__name__}: {e})") from None
    if len(coef) != len(pred.get("features", ())) or \
            not all(math.isfinite(c) and c >= 0 for c in coef):
        raise BadProfile(f"predictor coefficients {coef} are not one finite, non-negative "
                         "number per feature")
    err = stats.get("heldout_median_ape")
    if err is not None and (isinstance(err, bool) or not isinstance(err, (int, float))):
        raise BadProfile(f"stats.heldout_median_ape {err!r} is not a number")
    return data


def save_profile(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


@dataclass
class ProfileStep:
    # req_id -> tokens this iteration (prefill chunk or 1 for a decode).
    caps: dict[str, int]


@dataclass
class SyntheticRequest:
    req_id: str
    prompt_len: int
    # Tokens marked as already computed on admission (their KV blocks are
    # allocated but never written): lets the profile measure attention at long
    # contexts without paying for their prefill. Timing does not depend on KV values.
    pretend_computed: int = 0


@dataclass
class ProfilePlan:
    """A scripted sequence of iterations over synthetic requests.

    - decoders: one short prompt prefilled for real (MLP cost at zero context,
      chunk sizes cycling), plus decoders whose context is pretended at each
      context level; all then decode.
    - at each context level (0 .. max_context), a prompt is prefilled for a few
      chunks of cycling sizes while random subsets of the decoders decode
      alongside (mixed batches);
    - decode-only iterations with random subsets of the decoders.
    """

    requests: list[SyntheticRequest]
    steps: list[ProfileStep] = field(default_factory=list)

    @classmethod
    def build(cls, max_context: int, token_budget: int, max_chunk: int,
              max_model_len: int | None = None, seed: int = 0) -> "ProfilePlan":
        max_len = max_model_len or (max_context + 8192)
        max_context = min(max_context, max_len - 64)
        rng = random.Random(seed)
        sizes = [s for s in (32, 128, 512, 2048, 64, 256, 1024, 4096)
                 if s <= min(token_budget - 16, max_chunk)] or [max(1, token_budget // 2)]
        levels = sorted({0} | {max_context // d for d in (16, 8, 4, 2, 1)})
        reqs: list[SyntheticRequest] = []
        plan = cls(requests=reqs)
        # Decoders: pretend contexts at every level, a 16-token real chunk each.
        decoders = []
        for i, lvl in enumerate(levels):
            r = SyntheticRequest(f"{PROFILE_PREFIX}d{i}", lvl + 16, pretend_computed=lvl)
            reqs.append(r)
            decoders.append(r.req_id)
            plan.steps.append(ProfileStep({r.req_id: 16}))
        # Zero-context chunks of every size (real prefill).
        sizes = [c for c in sizes if c <= max_len - 64] or [32]
        z = SyntheticRequest(f"{PROFILE_PREFIX}z", sum(sizes))
        while z.prompt_len > max_len - 16 and len(sizes) > 1:
            sizes.remove(max(sizes))
            z.prompt_len = sum(sizes)
        reqs.append(z)
        for c in sorted(sizes):
            # Context grows by the earlier chunks: small, recorded exactly.
            plan.steps.append(ProfileStep({z.req_id: c}))
        # Chunks at each context level, with decoders alongside.
        for j, lvl in enumerate(levels):
            # NOTE(medha): bound chunk x context so one iteration stays short.
            lv_sizes = [c for c in sizes if c * max(lvl, 1) <= (1 << 25)] or sizes[:2]
            while lvl + sum(lv_sizes) > max_len - 16 and len(lv_sizes) > 1:
                lv_sizes.remove(max(lv_sizes))
            lv_sizes = [min(c, max_len - 16 - lvl) for c in lv_sizes]
            total = sum(lv_sizes)
            p = SyntheticRequest(f"{PROFILE_PREFIX}p{j}", lvl + total, pretend_computed=lvl)
            reqs.append(p)
            for c in lv_sizes:
                caps = {p.req_id: c}
                for d in rng.sample(decoders, rng.randint(0, len(decoders))):
                    caps[d] = 1
                plan.steps.append(ProfileStep(caps))
        # Decode-only iterations.
        for _ in range(16):
            sub = rng.sample(decoders, rng.randint(1, len(decoders)))
            plan.steps.append(ProfileStep({d: 1 for d in sub}))
        return plan

    def kv_tokens(self) -> int:
        return sum(r.prompt_len + 64 for r in self.requests)


class ProfileRecorder:
    """Collects (batch shape, measured seconds) and fits the predictor; every
    5th sample is held out to report the predictor's error."""

    def __init__(self, context_cap: int | None = None) -> None:
        # KV-cache parallelism's shard size (LinearBatchPredictor.context_cap).
        self.context_cap = context_cap
        self.shapes: list[BatchShape] = []
        self.times: list[float] = []
        self.started = time.perf_counter()

    def record(self, shape: BatchShape, seconds: float) -> None:
        self.shapes.append(shape)
        self.times.append(seconds)

    def fit(self) -> tuple[LinearBatchPredictor, dict]:
        # NOTE(medha): the first iterations pay one-off warm-up costs; skip 2.
        pairs = list(zip(self.shapes, self.times))[2:]
        train = [p for i, p in enumerate(pairs) if i % 5 != 4]
        held = [p for i, p in enumerate(pairs) if i % 5 == 4]
        pred = LinearBatchPredictor.fit([s for s, _ in train], [t for _, t in train],
                                        self.context_cap)
        errs = [ape(pred.predict(s), t) for s, t in held]
        # Final model uses every sample.
        final = LinearBatchPredictor.fit([s for s, _ in pairs], [t for _, t in pairs],
                                         self.context_cap)
        stats = {
            "num_samples": len(pairs),
            "num_heldout": len(held),
            "heldout_median_ape": median(errs),
            "heldout_p90_ape": sorted(errs)[int(0.9 * (len(errs) - 1))] if errs else None,
            "profile_seconds": time.perf_counter() - self.started,
            "samples": [
                {"prefill_chunks": list(map(list, s.prefill_chunks)),
                 "num_decodes": len(s.decode_contexts),
                 "decode_context_sum": sum(s.decode_contexts), "seconds": t}
                for s, t in pairs
            ],
        }
        return final, stats
