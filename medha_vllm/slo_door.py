"""Per-request SLOs checked at the door: an invalid `vllm_xargs` deadline is
an HTTP 400 that names the field, before the request reaches the engine.

vLLM's hook for validating `vllm_xargs` (SamplingParams.extra_args) is a
logits processor's `validate_params` classmethod: the API server's
InputProcessor runs it for every request at admission
(vllm/v1/engine/input_processor.py, `validate_logits_processors_params`), and
a `VLLMValidationError` there becomes a 400 response carrying `parameter`.
`vllm serve --scheduler medha` adds this class to `--logits-processors`
(patches/cli_args.py). In the worker it is a no-op: argmax-invariant, and
`apply` returns the logits untouched.

The engine still re-checks (medha_vllm/slo.requested_deadlines) for callers
that bypass the server (the Python `LLM` API), and applies the operator's
trust rules: `client_slos` and the `min_request_deadline_s` floor.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from medha_vllm.slo import XARG_TBT, XARG_TTFT, positive_seconds

VALIDATOR_FQCN = f"{__name__}:MedhaSloValidator"  # vLLM wants "<module>:<type>"


def check_xargs(extra_args: dict | None) -> None:
    """Raise VLLMValidationError naming the first invalid deadline field."""
    for name in (XARG_TTFT, XARG_TBT):
        if extra_args and name in extra_args:
            raw = extra_args[name]
            if positive_seconds(raw) is None:
                raise VLLMValidationError(
                    f"vllm_xargs.{name} must be a positive, finite number of seconds, "
                    f"got {raw!r}", parameter=f"vllm_xargs.{name}", value=repr(raw))


class MedhaSloValidator(LogitsProcessor):
    """Validates Medha's `vllm_xargs` fields; changes no logits."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        check_xargs(sampling_params.extra_args)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass
