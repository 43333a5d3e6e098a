"""MedhaConfig: every Medha option, validated on creation.

Pure Python (no vllm/torch import) so policy code and tests can use it alone.
Options arrive through `--additional-config '{"medha": {...}}'`, `--medha-*`
flags (see patches/cli_args.py) or `LLM(..., additional_config={"medha": ...})`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # policy types only; config.py stays importable alone
    from medha_vllm.policy.planner import PlannerSettings
    from medha_vllm.policy.work import DeadlineRules


class MedhaConfigError(ValueError):
    """A Medha option has a bad value; the message names the option and range."""


# (name, type, lower, upper, lower_inclusive, help). None bounds are open.
_SPECS: dict[str, tuple[type, float | None, float | None, bool, str]] = {
    "target_batch_time_s": (float, 0.0, 60.0, False,
        "time budget of one engine iteration (s); chunks are sized to fit it"),
    "solo_batch_time_s": (float, 0.0, 600.0, False,
        "time budget of an iteration whose prefill is the only request in the engine "
        "(nothing else running or waiting); default 8 x target_batch_time_s"),
    "solo_quiet_s": (float, 0.0, 86400.0, True,
        "a prefill alone in the engine gets the solo budget only once no other request has "
        "been in the engine for this long (s); default 2 x solo_batch_time_s"),
    "tbt_slo_s": (float, 0.0, 600.0, False,
        "deadline between consecutive output tokens (s); default 1.5 x target_batch_time_s"),
    "ttft_deadline_multiplier": (float, 1.0, 1000.0, True,
        "TTFT deadline = max(multiplier x predicted standalone prefill time, floor)"),
    "ttft_deadline_floor_s": (float, 0.0, 86400.0, True,
        "lower bound of the length-aware TTFT deadline (s)"),
    "min_request_deadline_s": (float, 0.0, 86400.0, True,
        "lowest TTFT deadline a client may declare in vllm_xargs (s); a smaller one is raised "
        "to it; default: the request's own length-aware deadline (clients may relax their "
        "deadline, not tighten it); 0 trusts every positive client deadline"),
    "min_chunk_size": (int, 1, 1 << 20, True,
        "smallest prefill chunk (tokens); also the step of the chunk-size grid"),
    "max_chunk_size": (int, 1, 1 << 22, True,
        "largest prefill chunk (tokens)"),
    "long_request_threshold": (int, 1, 1 << 40, True,
        "prompt length (tokens) from which a request is 'long' for space sharing"),
    "starvation_guard": (float, 0.0, 1000.0, True,
        "a prefill still unfinished at arrival + this x its TTFT deadline goes before every "
        "request that is not (the earliest such first); 0 turns the guard off"),
    "space_sharing_max_slack": (float, 0.0, 1.0, True,
        "rho_max: a long prefill uses target x (1 - clamp(rho, 0, rho_max)) of the budget"),
    "profile_time_budget_s": (float, 1.0, 3600.0, True,
        "wall-clock cap of the start-up profiling run (s)"),
    "profile_max_context": (int, 64, 1 << 24, True,
        "longest context (tokens) the start-up profile measures; longer ones extrapolate"),
    "kv_parallel_size": (int, 1, 64, True,
        "KV-cache parallelism: worker groups, each a full TP x PP replica of the weights, that "
        "hold one request's KV cache in contiguous token ranges (world = TP x PP x KVP)"),
    "kvp_max_tokens_per_group": (int, 1, 1 << 40, True,
        "tokens of one request's KV cache one KVP group holds (a multiple of the KV block "
        "size); default: what one worker's KV cache holds"),
}
_BOOL_OPTS = {
    "space_sharing": "give a long prefill only part of the budget, the rest to short prefills",
    "first_token_yield": "with space sharing, a long prefill ahead of its deadline sits out an "
                         "iteration that ends a short prefill (its first token is not delayed "
                         "by a long chunk)",
    "profile": "profile the model at start-up when no cached profile matches",
    "client_slos": "honour per-request deadlines clients declare in vllm_xargs "
                   "(ttft_deadline_s, tbt_deadline_s); false: every request gets the defaults",
}
# Options whose value is one of a fixed set of names: name -> (choices, help).
_CHOICE_OPTS = {
    "attention_backend": (("auto", "medha", "vllm"),
        "attention kernel on CPU: 'medha' (native KV-split kernel, refuses to start when it "
        "cannot serve the model), 'vllm' (vLLM's CPU_ATTN), 'auto' (medha where it serves "
        "the model and measures at least as fast as CPU_ATTN on this host, else vLLM's)"),
}
_STR_OPTS = {
    "profile_dir": "directory of cached predictor profiles (default ~/.cache/medha-vllm/profiles)",
    "timeline_path": "append a Chrome-trace timeline of every pipeline stage's forward "
                     "passes to this file (open it in Perfetto)",
}


@dataclass
class MedhaConfig:
    # Iteration time budget (s). None: platform default (see resolve()).
    target_batch_time_s: float | None = None
    # Budget of an iteration whose prefill is alone in the engine. None: 8 x target.
    solo_batch_time_s: float | None = None
    # Time the engine must have held no other request before a lone prefill
    # gets the solo budget. None: 2 x solo_batch_time_s.
    solo_quiet_s: float | None = None
    # Decode (time-between-tokens) deadline (s). None: 1.5 x target.
    tbt_slo_s: float | None = None
    # Length-aware TTFT deadline: max(multiplier x standalone prefill, floor).
    ttft_deadline_multiplier: float = 1.5
    ttft_deadline_floor_s: float = 0.5
    # Client-declared deadlines (vllm_xargs): honoured at all, and the lowest
    # TTFT deadline a client may declare (None: its own length-aware
    # deadline; see policy.work.DeadlineRules).
    client_slos: bool = True
    min_request_deadline_s: float | None = None
    # Chunk-size grid for the adaptive chunk search.
    min_chunk_size: int = 32
    max_chunk_size: int = 4096
    # Space sharing of one long prefill with short prefills.
    space_sharing: bool = True
    long_request_threshold: int = 16384
    space_sharing_max_slack: float = 0.5
    first_token_yield: bool = True
    # Starvation guard of the LARS order (policy/planner.py priority_of).
    starvation_guard: float = 2.0
    # Runtime predictor profiling.
    profile: bool = True
    profile_dir: str | None = None
    profile_time_budget_s: float = 45.0
    profile_max_context: int = 65536
    # Attention kernel on CPU (medha_vllm/attention): auto, medha or vllm.
    attention_backend: str = "auto"
    # KV-cache parallelism (medha_vllm/kvp): worker groups and the shard
    # size (None: what one worker's KV cache holds).
    kv_parallel_size: int = 1
    kvp_max_tokens_per_group: int | None = None
    # Stage timeline (Chrome trace) output file; None: off.
    timeline_path: str | None = None
    # Anything the user passed that we resolved (for logging).
    _explicit: frozenset = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, (typ, lo, hi, lo_incl, desc) in _SPECS.items():
            value = getattr(self, name)
            if value is None and name in ("target_batch_time_s", "tbt_slo_s",
                                          "solo_batch_time_s", "solo_quiet_s",
                                          "min_request_deadline_s",
                                          "kvp_max_tokens_per_group"):
                continue
            _check_number(name, value, typ, lo, hi, lo_incl)
        for name in _BOOL_OPTS:
            if not isinstance(getattr(self, name), bool):
                raise MedhaConfigError(
                    f"medha option '{name}' must be true or false, got {getattr(self, name)!r}")
        for name, (choices, _) in _CHOICE_OPTS.items():
            if getattr(self, name) not in choices:
                raise MedhaConfigError(
                    f"medha option '{name}' = {getattr(self, name)!r} is not valid: accepted "
                    f"{', '.join(choices)}")
        for name in _STR_OPTS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise MedhaConfigError(
                    f"medha option '{name}' must be a path string, got {value!r}")
        if self.max_chunk_size < self.min_chunk_size:
            raise MedhaConfigError(
                f"medha option 'max_chunk_size' = {self.max_chunk_size} must be >= "
                f"'min_chunk_size' = {self.min_chunk_size}")

    # ------------------------------------------------------------------ API
    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> "MedhaConfig":
        options = dict(options or {})
        known = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        unknown = sorted(set(options) - known)
        if unknown:
            raise MedhaConfigError(
                f"unknown medha option(s) {unknown}; accepted: {sorted(known)}")
        return cls(**options, _explicit=frozenset(options))

    @classmethod
    def from_vllm_config(cls, vllm_config: Any) -> "MedhaConfig":
        extra = getattr(vllm_config, "additional_config", None) or {}
        section = extra.get("medha", {}) if isinstance(extra, dict) else {}
        if not isinstance(section, dict):
            raise MedhaConfigError("additional_config['medha'] must be a JSON object")
        return cls.from_dict(section)

    def resolve(self, on_gpu: bool) -> "MedhaConfig":
        """Fill platform defaults. NOTE(medha): on GPUs the reference engine
        uses a 50 ms budget; on the project's 2-core CPUs a decode step of the
        small models alone takes tens of ms, so the budget is 150 ms there."""
        target = self.target_batch_time_s
        if target is None:
            target = 0.05 if on_gpu else 0.15
        tbt = self.tbt_slo_s if self.tbt_slo_s is not None else 1.5 * target
        solo = max(self.solo_batch_time_s if self.solo_batch_time_s is not None else 8 * target,
                   target)
        quiet = self.solo_quiet_s if self.solo_quiet_s is not None else 2 * solo
        return dataclasses.replace(self, target_batch_time_s=target, tbt_slo_s=tbt,
                                   solo_batch_time_s=solo, solo_quiet_s=quiet)

    def check_paths(self) -> None:
        """Start-up check that the output paths can be written (the engine
        would otherwise fail at its first write, in a worker for the
        timeline). Creates the profile directory; writes nothing else."""
        if self.profile_dir is not None:
            check_writable_dir("profile_dir", self.profile_dir)
        if self.timeline_path is not None:
            path = Path(self.timeline_path).expanduser()
            if path.is_dir():
                raise MedhaConfigError(f"medha option 'timeline_path' = '{self.timeline_path}' "
                                       "is a directory; give a file path")
            check_writable_dir("timeline_path", path.parent, what="its directory")
            if path.exists() and not os.access(path, os.W_OK):
                raise MedhaConfigError(f"medha option 'timeline_path' = '{self.timeline_path}' "
                                       "is not writable")

    def describe(self, settings: "PlannerSettings", rules: "DeadlineRules") -> str:
        """The start-up log's summary of the budgets and chunking in force."""
        return (f"target batch time {settings.target_batch_time_s:.3f} s (solo "
                f"{settings.solo_batch_time_s:.3f} s after {settings.solo_quiet_s:.3f} s alone), TBT SLO {rules.tbt_slo_s:.3f} s, chunks "
                f"{self.min_chunk_size}..{self.max_chunk_size}, space sharing {self.space_sharing} "
                f"(long >= {self.long_request_threshold} tokens, rho_max "
                f"{self.space_sharing_max_slack:.2f}, first-token yield "
                f"{self.first_token_yield})")

    def planner_settings(self) -> "PlannerSettings":
        """The planner's knobs (policy.planner.PlannerSettings) of a resolved
        config; the profile may later replace the budgets (policy/budget.py)."""
        from medha_vllm.policy.planner import PlannerSettings

        return PlannerSettings(
            target_batch_time_s=self.target_batch_time_s,
            solo_batch_time_s=self.solo_batch_time_s, solo_quiet_s=self.solo_quiet_s,
            min_chunk=self.min_chunk_size,
            max_chunk=self.max_chunk_size, space_sharing=self.space_sharing,
            long_request_threshold=self.long_request_threshold,
            rho_max=self.space_sharing_max_slack, first_token_yield=self.first_token_yield,
            starvation_guard=self.starvation_guard)

    def deadline_rules(self) -> "DeadlineRules":
        """How a new request's deadlines are set (policy.work.DeadlineRules)."""
        from medha_vllm.policy.work import DeadlineRules

        return DeadlineRules(self.ttft_deadline_multiplier, self.ttft_deadline_floor_s,
                             self.tbt_slo_s, self.client_slos, self.min_request_deadline_s)

    @staticmethod
    def check_option(name: str, value: Any) -> None:
        """Validate one option's type and range alone (relations between
        options, such as max_chunk_size >= min_chunk_size, are checked when
        the whole config is built)."""
        if name in _SPECS:
            if value is None:
                return
            typ, lo, hi, lo_incl, _ = _SPECS[name]
            _check_number(name, value, typ, lo, hi, lo_incl)
        else:
            MedhaConfig.from_dict({name: value})

    @staticmethod
    def choices(name: str) -> tuple[str, ...] | None:
        """The accepted values of a choice option, None for other options."""
        spec = _CHOICE_OPTS.get(name)
        return None if spec is None else spec[0]

    @staticmethod
    def describe_options() -> dict[str, str]:
        """Option name -> one-line help with the accepted range (for CLI/README)."""
        out = {}
        for name, (typ, lo, hi, lo_incl, desc) in _SPECS.items():
            out[name] = f"{desc}; {_range_text(typ, lo, hi, lo_incl)}"
        out.update(_BOOL_OPTS)
        out.update({name: f"{desc}; one of {', '.join(choices)}"
                    for name, (choices, desc) in _CHOICE_OPTS.items()})
        out.update(_STR_OPTS)
        return out


def check_writable_dir(option: str, directory: str | os.PathLike, what: str = "") -> Path:
    """Create `directory` if needed and write-probe it; MedhaConfigError naming
    `option` (and the OS error) if either fails."""
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".medha-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = f"{what} {path}" if what else str(path)
        raise MedhaConfigError(f"medha option '{option}': cannot write to {where} "
                               f"({e.strerror or e})") from None
    return path


def _range_text(typ, lo, hi, lo_incl) -> str:
    kind = "integer" if typ is int else "number"
    left = "[" if lo_incl else "("
    return f"{kind} in {left}{lo}, {hi}]"


def _check_number(name, value, typ, lo, hi, lo_incl) -> None:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        ok_type = ok_type and float(value).is_integer()
    if not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        raise MedhaConfigError(
            f"medha option '{name}' = {value!r} is not valid: accepted {_range_text(typ, lo, hi, lo_incl)}")
    below = value < lo if lo_incl else value <= lo
    if below or value > hi:
        raise MedhaConfigError(
            f"medha option '{name}' = {value!r} is out of range: accepted {_range_text(typ, lo, hi, lo_incl)}")
