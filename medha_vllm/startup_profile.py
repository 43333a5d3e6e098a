"""The start-up profile: real engine iterations run before the engine reports
ready (patches/profile_before_ready.py calls `run_before_ready` at the end of
EngineCore.__init__, so `vllm serve` answers /health only once it is done).

The scheduler adds
synthetic requests (ids prefixed `medha-profile-`), dictates each iteration's
exact batch (`ProfilePlan` in profiler.py), times each iteration from
schedule() to update_from_output(), drops the synthetic outputs and aborts
the synthetic requests at the end. The real executor, model runner and
attention backend are what gets measured. Should the engine loop start with
the profile still pending (the patch retired or not applied), the loop runs
it as its first iterations and requests wait in the queue meanwhile (at most
`profile_time_budget_s`). The fitted predictor is cached on disk
(profiler.save_profile), so later starts skip all of this.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from vllm.logger import init_logger

from medha_vllm import vllm_seams as seams
from medha_vllm.config import check_writable_dir
from medha_vllm.policy.predictor import BatchShape, LinearBatchPredictor
from medha_vllm.profiler import (PROFILE_FORMAT, PROFILE_PREFIX, BadProfile, ProfilePlan,
                                 ProfileRecorder, default_profile_dir, hardware_id, load_profile,
                                 profile_key, save_profile)

logger = init_logger(f"vllm.{__name__}")


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


def _kernel_build() -> str:
    from medha_vllm.kernels import native

    return native.library_path().name


def run_before_ready(engine_core: Any) -> None:
    """Drive `engine_core`'s own steps until its scheduler's pending start-up
    profile is over and no batch is in flight (nothing if none is pending)."""
    profile = getattr(getattr(engine_core, "scheduler", None), "profile", None)
    if not isinstance(profile, StartupProfile) or not profile.active:
        return
    started = time.perf_counter()
    # A generous stop: the plan ends by its own time budget.
    give_up = started + 3 * profile.cfg.profile_time_budget_s + 120
    logger.info("Medha: profiling before the engine reports ready")
    queue = getattr(engine_core, "batch_queue", None)
    while profile.active or queue:
        engine_core.step_fn()
        if time.perf_counter() > give_up:
            logger.warning("Medha: the start-up profile did not finish in %.0f s; the "
                           "engine loop finishes it", time.perf_counter() - started)
            return
    logger.info("Medha: start-up profile done in %.1f s; the engine reports ready now",
                time.perf_counter() - started)


class StartupProfile:
    """Loads a cached predictor, or plans and drives the profiling iterations.

    Lifecycle: `predictor` is the cached one (or None); while `active`, the
    scheduler asks `next_caps()` for each iteration's batch, reports each
    clean batch to `record()`, and gets the fitted predictor from `finish()`."""

    def __init__(self, sched: Any, cfg: Any) -> None:
        self.sched = sched
        self.cfg = cfg
        self.predictor: LinearBatchPredictor | None = None
        self.profile_error: float | None = None
        self.plan: ProfilePlan | None = None
        self._rec: ProfileRecorder | None = None
        self._step = -1
        vc = sched.vllm_config
        pc = vc.parallel_config
        self.max_context = self._context_limit()
        self.key_fields = {
            "model": str(vc.model_config.model), "dtype": str(vc.model_config.dtype),
            "hardware": hardware_id(), "tp": pc.tensor_parallel_size,
            "pp": pc.pipeline_parallel_size, "block_size": sched.block_size,
            "token_budget": sched.max_num_scheduled_tokens, "vllm": _vllm_version(),
            "max_context": self.max_context,
            # The attention kernels measured (the choice and the native build).
            "attention": cfg.attention_backend, "attention_kernel": _kernel_build(),
        }
        if getattr(sched, "kvp", None) is not None:  # KV-cache parallel steps cost what the slowest group does
            self.key_fields.update(kvp=sched.kvp.groups, kvp_shard=sched.kvp.shard_tokens)
        pdir = default_profile_dir() if cfg.profile_dir is None else Path(cfg.profile_dir).expanduser()
        self.path = pdir / f"{profile_key(self.key_fields)}.json"
        try:
            cached = load_profile(self.path)
        except BadProfile as e:
            # NOTE(medha): a bad cache file costs a re-profile, never the engine.
            logger.warning("Medha: ignoring the cached profile %s: %s; %s", self.path, e,
                           "re-profiling" if cfg.profile else "profiling is off, so a "
                           "generic predictor is used")
            cached = None
        if cached is not None:
            self.predictor = LinearBatchPredictor.from_dict(cached["predictor"])
            self.profile_error = cached["stats"].get("heldout_median_ape")
            logger.info("Medha: loaded predictor profile %s (held-out median error %.1f%%)",
                        self.path, 100 * (self.profile_error or 0))
            return
        if not cfg.profile:
            logger.warning("Medha: no cached profile and profiling disabled; using a "
                           "generic predictor until live iterations correct it")
            return
        # It will be saved there: fail now, naming the option, not after profiling.
        check_writable_dir("profile_dir", pdir,
                           what="the profile directory (set --medha-profile-dir or "
                                "MEDHA_CACHE_DIR)" if cfg.profile_dir is None else "")
        self.plan = ProfilePlan.build(self.max_context, sched.max_num_scheduled_tokens,
                                      cfg.max_chunk_size, max_model_len=sched.max_model_len)
        logger.info("Medha: will profile %s on %s (%d iterations, up to %d tokens of context, "
                    "at most %.0f s) as the engine's first iterations", self.key_fields["model"],
                    self.key_fields["hardware"], len(self.plan.steps), self.max_context,
                    cfg.profile_time_budget_s)

    @property
    def active(self) -> bool:
        return self.plan is not None

    def _context_limit(self) -> int:
        # The plan holds about 2 x levels x context of KV at once: keep it
        # within a third of the cache.
        s = self.sched
        kv_tokens = s.kv_cache_config.num_blocks * s.block_size
        return max(64, min(self.cfg.profile_max_context, s.max_model_len - 64, kv_tokens // 12))

    def _start(self) -> None:
        """Add the synthetic requests. NOTE(medha): deferred to the first
        iteration because the engine initialises its block hashing (needed by
        prefix caching for every request) only after building the scheduler."""
        vocab = self.sched.vllm_config.model_config.get_vocab_size()
        rng = random.Random(time.time_ns())
        hasher = seams.block_hasher(self.sched)
        for sr in self.plan.requests:
            self.sched.add_request(seams.synthetic_request(
                sr.req_id, [rng.randrange(1, vocab) for _ in range(sr.prompt_len)],
                sr.pretend_computed, hasher))
        self._step = 0
        kvp = getattr(self.sched, "kvp", None)
        self._rec = ProfileRecorder(kvp.shard_tokens if kvp is not None else None)
        logger.info("Medha: profiling started; requests wait until it ends")

    def next_caps(self) -> dict[str, int] | None:
        """Chunk caps of the next profiling iteration; None when it is over
        (call finish())."""
        if self._step < 0:
            self._start()
        spent = time.perf_counter() - self._rec.started
        if self._step >= len(self.plan.steps) or spent > self.cfg.profile_time_budget_s:
            return None
        step = self.plan.steps[self._step]
        self._step += 1
        return dict(step.caps)

    def iteration_caps(self, clean: bool) -> dict[str, int] | None:
        """This iteration's dictated batch (req_id -> tokens, with `waiting`
        put in its order; {} while a batch is in flight: profile batches are
        timed one at a time, so nothing is dispatched meanwhile), or None once
        the profile is over (the fitted predictor is then in use)."""
        s = self.sched
        caps = self.next_caps() if clean else {}
        if caps is None:
            predictor = self.finish()
            if predictor is not None:
                s.set_predictor(predictor)
                s.metrics.set_profile_error(self.profile_error)
            return None
        seams.reorder_waiting(s, [s.requests[rid] for rid in caps if rid in s.requests])
        return caps

    def record(self, shape: BatchShape, seconds: float) -> None:
        if self._rec is not None:
            self._rec.record(shape, seconds)

    def finish(self) -> LinearBatchPredictor | None:
        """Abort the synthetic requests, fit and save; the new predictor or None."""
        ids = [r.req_id for r in self.plan.requests]
        self.sched.finish_requests(ids, seams.abort_status())
        rec, self.plan, self._rec = self._rec, None, None
        if rec is None or len(rec.times) < 8:
            logger.warning("Medha: profiling stopped early with too few samples; "
                           "using a generic predictor corrected online")
            return None
        predictor, stats = rec.fit()
        save_profile(self.path, {"format": PROFILE_FORMAT, "key": self.key_fields,
                                 "predictor": predictor.to_dict(), "stats": stats})
        self.predictor, self.profile_error = predictor, stats["heldout_median_ape"]
        logger.info("Medha: profiled %d iterations in %.1f s; held-out median error %.1f%%; "
                    "saved %s", stats["num_samples"], stats["profile_seconds"],
                    100 * stats["heldout_median_ape"], self.path)
        return predictor

    @staticmethod
    def drop_outputs(outputs: dict) -> None:
        """Remove the synthetic requests' outputs before they reach the clients."""
        for eco in outputs.values():
            eco.outputs = [o for o in eco.outputs if not o.request_id.startswith(PROFILE_PREFIX)]
            if eco.finished_requests:
                eco.finished_requests = {r for r in eco.finished_requests
                                         if not r.startswith(PROFILE_PREFIX)}

    @staticmethod
    def is_synthetic(req_id: str) -> bool:
        return req_id.startswith(PROFILE_PREFIX)
