"""medha-vllm: Medha (arXiv 2409.17264) as a vLLM plugin.

The single entry point is `register()`, declared under `vllm.general_plugins`.
vLLM calls it once in every process (API server, engine core, workers); it is
idempotent, imports lazily and never touches a device.
"""

from __future__ import annotations

__version__ = "0.1.0"

SCHEDULER_CLS = "medha_vllm.scheduler.MedhaScheduler"


def is_medha_scheduler(cls: object) -> bool:
    """`cls` (a `scheduler_cls` value: a dotted name or a class) is Medha's."""
    if isinstance(cls, str):
        return cls == SCHEDULER_CLS
    if isinstance(cls, type):
        from medha_vllm.scheduler import MedhaScheduler

        return issubclass(cls, MedhaScheduler)
    return False

_registered = False


def register() -> None:
    """vLLM general-plugin entry point: check the vLLM version, apply patches.

    NOTE(medha): installing the plugin must never break plain vLLM. Next to a
    vLLM it does not support, it logs one warning and stays out of the way
    (no patch applied) in every process; only asking for Medha
    (`--scheduler medha`, a `--medha-*` flag, or MedhaScheduler itself) turns
    that into a start-up error that says what to install."""
    global _registered
    if _registered:
        return
    _registered = True
    from medha_vllm.compat import vllm_version_problem

    problem = vllm_version_problem()
    if problem is None:
        from medha_vllm.patches import apply_all

        apply_all()
        return
    import logging

    logging.getLogger("vllm.medha_vllm").warning(
        "medha-vllm is inactive: %s Plain vLLM runs unchanged; --scheduler medha will "
        "refuse to start.", problem)
    try:
        # Only the flags, so that `--scheduler medha` fails with that message
        # instead of "unrecognized arguments".
        from medha_vllm.patches import cli_args

        cli_args.UNSUPPORTED = problem
        cli_args.apply()
    except Exception as e:  # noqa: BLE001 - never break plain vLLM
        logging.getLogger("vllm.medha_vllm").warning(
            "medha-vllm: could not add its CLI flags to this vLLM (%s)", e)
