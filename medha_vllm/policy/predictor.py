"""Runtime predictor: engine-iteration time as a function of the batch.

A batch is described by its prefill chunks (tokens, context before the chunk)
and its decodes (context length each). The model is linear in five features
whose costs dominate a transformer step:

    t = w0                                  fixed step overhead (launch, sampling)
      + w1 * total query tokens             MLP / projections, linear in tokens
      + w2 * prefill attention pairs        sum_i c_i * (ctx_i + (c_i + 1) / 2)
      + w3 * prefill context read           sum_i ctx_i (KV read once per chunk)
      + w4 * decode attention pairs         sum_j ctx_j (one query token each)
      + w5 * number of sequences            per-sequence bookkeeping

NOTE(medha): the "context read" term is what makes small chunks at long
context dear on CPUs: measured on the project's 2-core machine, a 32-token
chunk at 64K context costs ~5 ms a token against ~2.4 ms for a 512-token
chunk, because each chunk streams the whole KV cache once.

Coefficients are fitted (non-negative, relative-error weighted) on batches
profiled on the served model and hardware; see medha_vllm/profiler.py.
NOTE(medha): the attention terms are linear in (query x key) pairs, so a
profile measured up to a few thousand tokens of context extrapolates to longer
ones; an online correction (OnlineCorrection) absorbs what it misses.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

FEATURES = ("const", "tokens", "prefill_attn_mpairs", "prefill_ctx_mtokens", "decode_attn_mpairs",
            "num_seqs")


@dataclass(frozen=True)
class BatchShape:
    # (chunk tokens, context tokens already in KV before the chunk) per prefill.
    prefill_chunks: tuple[tuple[int, int], ...] = ()
    # Context length (tokens in KV) of each decode in the batch.
    decode_contexts: tuple[int, ...] = ()

    def with_chunk(self, tokens: int, context: int) -> "BatchShape":
        return BatchShape(self.prefill_chunks + ((tokens, context),), self.decode_contexts)

    @property
    def num_tokens(self) -> int:
        return sum(c for c, _ in self.prefill_chunks) + len(self.decode_contexts)


def features(shape: BatchShape) -> list[float]:
    tokens = shape.num_tokens
    pf = sum(c * (ctx + (c + 1) / 2.0) for c, ctx in shape.prefill_chunks) / 1e6
    pctx = sum(ctx for _, ctx in shape.prefill_chunks) / 1e6
    dc = sum(shape.decode_contexts) / 1e6
    nseq = len(shape.prefill_chunks) + len(shape.decode_contexts)
    return [1.0, float(tokens), pf, pctx, dc, float(nseq)]


def cap_contexts(shape: BatchShape, cap: int | None) -> BatchShape:
    """`shape` as the slowest KV-cache parallel group sees it: with shards of
    `cap` tokens, every group attends over at most `cap` tokens of a
    sequence (the groups run in lockstep, in parallel), so a context counts
    up to `cap`. None: no KVP, unchanged."""
    if cap is None:
        return shape
    return BatchShape(tuple((c, min(ctx, cap)) for c, ctx in shape.prefill_chunks),
                      tuple(min(ctx, cap) for ctx in shape.decode_contexts))


@dataclass
class LinearBatchPredictor:
    coef: list[float] = field(default_factory=lambda: [0.005, 1e-4, 1e-2, 1e-3, 1e-2, 1e-4])
    # KV-cache parallelism: the shard size (contexts count up to it); None without KVP.
    context_cap: int | None = None

    def predict(self, shape: BatchShape) -> float:
        return _dot(self.coef, features(cap_contexts(shape, self.context_cap)))

    def predict_chunk(self, base: BatchShape, base_time: float, tokens: int, context: int) -> float:
        """Time of `base` plus one more prefill chunk, from `base`'s predicted
        time (incremental: avoids re-summing the base batch in the chunk search)."""
        if self.context_cap is not None:
            context = min(context, self.context_cap)
        c = tokens
        pf = c * (context + (c + 1) / 2.0) / 1e6
        w = self.coef
        return base_time + w[1] * c + w[2] * pf + w[3] * context / 1e6 + w[5]

    @classmethod
    def fit(cls, shapes: Sequence[BatchShape], times: Sequence[float],
            context_cap: int | None = None) -> "LinearBatchPredictor":
        """Non-negative least squares on relative error (weights 1/t); with
        KVP on the contexts the slowest group sees (cap_contexts)."""
        X = np.array([features(cap_contexts(s, context_cap)) for s in shapes], dtype=float)
        y = np.array(times, dtype=float)
        w = 1.0 / np.maximum(y, 1e-6)
        active = list(range(X.shape[1]))
        coef = np.zeros(X.shape[1])
        # NOTE(medha): tiny active-set NNLS: drop the most negative coefficient
        # and refit until all are >= 0 (6 features, converges in <= 6 rounds).
        while active:
            A = X[:, active] * w[:, None]
            sol, *_ = np.linalg.lstsq(A, y * w, rcond=None)
            if (sol >= 0).all():
                coef[:] = 0.0
                coef[active] = sol
                break
            active.pop(int(np.argmin(sol)))
        return cls(coef=[float(c) for c in coef], context_cap=context_cap)

    def to_dict(self) -> dict:
        return {"features": list(FEATURES), "coef": list(self.coef), "context_cap": self.context_cap}

    @classmethod
    def from_dict(cls, d: dict) -> "LinearBatchPredictor":
        if list(d.get("features", [])) != list(FEATURES):
            raise ValueError("predictor profile has other features; re-profile")
        return cls(coef=[float(x) for x in d["coef"]], context_cap=d.get("context_cap"))


def _dot(a: Iterable[float], b: Iterable[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def ape(predicted: float, measured: float) -> float:
    """Absolute percentage error of one prediction."""
    return abs(predicted - measured) / max(measured, 1e-9)


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    if not s:
        return math.nan
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


class OnlineCorrection:
    """Multiplicative correction learnt from live iterations.

    Keeps an exponential moving average of measured/predicted per batch class
    (with or without a prefill chunk): the profile may miss effects of long
    contexts or of other load on the machine, and deadlines need the truth.
    The ratio is clamped to [0.25, 4] so one outlier cannot derail chunking.
    """

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.ratio = {True: 1.0, False: 1.0}
        self.errors: list[float] = []  # APE of held-out (pre-update) predictions

    def factor(self, has_prefill: bool) -> float:
        return self.ratio[has_prefill]

    def observe(self, has_prefill: bool, predicted: float, measured: float) -> None:
        if predicted <= 0 or measured <= 0:
            return
        self.errors.append(ape(predicted, measured))
        if len(self.errors) > 2048:
            del self.errors[:1024]
        r = min(4.0, max(0.25, measured / (predicted / self.ratio[has_prefill])))
        self.ratio[has_prefill] += self.alpha * (r - self.ratio[has_prefill])

    def observe_batch(self, predictor: "LinearBatchPredictor", shape: BatchShape,
                      measured: float) -> float:
        """Learn from a batch of `shape` that took `measured` seconds; returns
        the corrected prediction it had (before this update)."""
        has_prefill = bool(shape.prefill_chunks)
        predicted = predictor.predict(shape) * self.factor(has_prefill)
        self.observe(has_prefill, predicted, measured)
        return predicted


class PrefillTimeTable:
    """T[n]: predicted time to prefill the first n tokens of a prompt alone,
    with adaptive chunking under the iteration budget (Medha's remaining-work
    table: remaining(n_total, n_done) = T[n_total] - T[n_done])."""

    def __init__(self, predictor: LinearBatchPredictor, target_s: float, min_chunk: int,
                 max_chunk: int, max_len: int) -> None:
        self.points: list[int] = [0]
        self.times: list[float] = [0.0]
        ctx, t = 0, 0.0
        empty = BatchShape()
        base = predictor.predict(empty)
        while ctx < max_len:
            c = largest_fitting_chunk(
                lambda n: predictor.predict_chunk(empty, base, n, ctx),
                target_s, max_len - ctx, min_chunk, max_chunk)
            c = c or min(min_chunk, max_len - ctx)
            t += predictor.predict_chunk(empty, base, c, ctx)
            ctx += c
            self.points.append(ctx)
            self.times.append(t)

    def __call__(self, n: int) -> float:
        if n <= 0:
            return 0.0
        i = bisect.bisect_left(self.points, n)
        if i >= len(self.points):
            # Beyond the table: extrapolate with the last slope.
            (x0, x1), (y0, y1) = self.points[-2:], self.times[-2:]
            return y1 + (n - x1) * (y1 - y0) / max(x1 - x0, 1)
        x0, x1 = self.points[i - 1], self.points[i]
        y0, y1 = self.times[i - 1], self.times[i]
        return y0 + (n - x0) * (y1 - y0) / max(x1 - x0, 1)


def largest_fitting_chunk(time_of, limit_s: float, remaining: int, min_chunk: int,
                          max_chunk: int) -> int:
    """Largest chunk on the min_chunk grid (or the whole remainder) whose
    predicted batch time `time_of(chunk)` is <= limit_s; 0 if none fits.
    time_of must be non-decreasing in the chunk size (binary search)."""
    if remaining <= 0:
        return 0
    hi_tokens = min(remaining, max_chunk)
    # Candidates: k * min_chunk for k = 1..K, plus the exact remainder when it
    # is the last chunk (so a prompt is never padded to the grid).
    k_max = hi_tokens // min_chunk
    cands_tail = remaining if remaining <= max_chunk else None
    best = 0
    if cands_tail is not None and time_of(cands_tail) <= limit_s:
        return cands_tail
    # NOTE(medha): once the budget is spent most candidates fit nothing; the
    # smallest chunk settles that in one prediction instead of a search.
    if time_of(min(min_chunk, remaining)) > limit_s:
        return 0
    if remaining < min_chunk:
        return remaining  # off the grid, and it fits
    lo, hi = 1, k_max
    while lo <= hi:
        mid = (lo + hi) // 2
        if time_of(mid * min_chunk) <= limit_s:
            best = mid * min_chunk
            lo = mid + 1
        else:
            hi = mid - 1
    return best
