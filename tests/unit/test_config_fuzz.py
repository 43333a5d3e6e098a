"""Config fuzz: every Medha option, through the `--medha-*` flags and through
`--additional-config '{"medha": {...}}'`, parsed by the real `vllm serve`
argument parser (AsyncEngineArgs with the cli_args patch, what `vllm serve`
runs before it starts anything).

- Every invalid value is refused with exit status 2 and a message naming the
  option; any other exception (a traceback) fails the test.
- Every valid combination parses to exactly the options given and builds a
  MedhaConfig (a sample also starts a real engine: tests/e2e/test_config_sample.py).
"""

from __future__ import annotations

import json
import math
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_patches import _parse  # the real `vllm serve` parser with the cli_args patch

from medha_vllm import config as mc
from medha_vllm.config import MedhaConfig

OPTIONAL_NUMBERS = ("target_batch_time_s", "solo_batch_time_s", "solo_quiet_s", "tbt_slo_s",
                    "min_request_deadline_s")
ALL = [*mc._SPECS, *mc._BOOL_OPTS, *mc._CHOICE_OPTS, *mc._STR_OPTS]
# Valid paths for the path options (created once; check_paths may write there).
SCRATCH = tempfile.mkdtemp(prefix="medha-fuzz-")
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def test_every_option_is_fuzzed():
    from dataclasses import fields

    assert sorted(ALL) == sorted(f.name for f in fields(MedhaConfig) if not f.name.startswith("_"))


# ------------------------------------------------------------------ values
def _bad_number(name):
    typ, lo, hi, lo_incl, _ = mc._SPECS[name]
    below = st.floats(max_value=lo, exclude_max=lo_incl, allow_nan=False, allow_infinity=False)
    above = st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False)
    if typ is int:
        below, above = below.map(math.floor).filter(lambda v: v < lo), above.map(math.ceil)
    bad = [below, above, st.sampled_from([math.nan, math.inf, -math.inf, True, False]),
           st.text(max_size=8), st.lists(st.integers(), max_size=2)]
    if typ is int:  # a non-integer inside the range
        bad.append(st.floats(min_value=lo, max_value=min(hi, 1e6), allow_nan=False)
                   .filter(lambda v: not float(v).is_integer()))
    return st.one_of(*bad)


def bad_value(name):
    if name in mc._SPECS:
        return _bad_number(name)
    if name in mc._BOOL_OPTS:
        return st.one_of(st.integers(), st.text(max_size=6), st.none(), st.floats())
    if name in mc._CHOICE_OPTS:
        choices = mc._CHOICE_OPTS[name][0]
        return st.one_of(st.text(max_size=8).filter(lambda v: v not in choices), st.integers())
    return st.one_of(st.just(""), st.integers(), st.lists(st.text(), max_size=2))  # paths


def good_value(name):
    if name in mc._SPECS:
        typ, lo, hi, lo_incl, _ = mc._SPECS[name]
        if typ is int:
            return st.integers(min_value=int(lo), max_value=int(min(hi, 1 << 24)))
        v = st.floats(min_value=lo, max_value=hi, exclude_min=not lo_incl, allow_nan=False)
        return st.one_of(v, st.none()) if name in OPTIONAL_NUMBERS else v
    if name in mc._BOOL_OPTS:
        return st.booleans()
    if name in mc._CHOICE_OPTS:
        return st.sampled_from(mc._CHOICE_OPTS[name][0])
    sub = st.text("abcdef", min_size=1, max_size=6)
    if name == "timeline_path":
        return sub.map(lambda s: f"{SCRATCH}/timeline-{s}.json")
    return sub.map(lambda s: f"{SCRATCH}/profiles-{s}")


def _consistent(opts):
    lo, hi = opts.get("min_chunk_size"), opts.get("max_chunk_size")
    lo_eff = lo if lo is not None else MedhaConfig.min_chunk_size
    hi_eff = hi if hi is not None else MedhaConfig.max_chunk_size
    return hi_eff >= lo_eff


good_configs = st.fixed_dictionaries({}, optional={n: good_value(n) for n in ALL}) \
    .map(lambda d: {k: v for k, v in d.items() if v is not None}).filter(_consistent)


# ------------------------------------------------------------------ parser
def _refused(argv, model, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _parse(argv, model)
    assert e.value.code == 2, argv
    return capsys.readouterr().err


def _flag_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


@FUZZ
@given(data=st.data())
def test_invalid_value_in_additional_config_is_refused_naming_it(data, smollm2_path, capsys):
    name = data.draw(st.sampled_from(ALL))
    value = data.draw(bad_value(name))
    extra = json.dumps({"medha": {name: value}})
    err = _refused(["--scheduler", "medha", "--additional-config", extra], smollm2_path, capsys)
    assert name in err, (name, value, err[-500:])
    assert "Traceback" not in err


BOOL_TEXTS = {"true", "false", "1", "0", "yes", "no"}  # what a boolean flag accepts


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


def bad_flag_text(name):
    """Flag texts that must be refused (a flag's value is text: 0 is a valid
    boolean there, and any non-empty text a valid path)."""
    if name in mc._SPECS:
        typ, lo, hi, lo_incl, _ = mc._SPECS[name]
        numbers = st.one_of(_bad_number(name).filter(
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).map(_flag_text),
            st.sampled_from(["nan", "inf", "-inf"]))
        return st.one_of(numbers, st.text(max_size=8).filter(_not_a_number))
    if name in mc._BOOL_OPTS:
        return st.text(max_size=6).filter(lambda t: t.lower() not in BOOL_TEXTS)
    if name in mc._CHOICE_OPTS:
        return st.text(max_size=8).filter(lambda t: t not in mc._CHOICE_OPTS[name][0])
    return st.just("")  # paths; bad ones: tests/sched/test_profile_cache.py


@FUZZ
@given(data=st.data())
def test_invalid_flag_value_is_refused_naming_it(data, smollm2_path, capsys):
    name = data.draw(st.sampled_from(ALL))
    text = data.draw(bad_flag_text(name))
    flag = "--medha-" + name.replace("_", "-")
    err = _refused(["--scheduler", "medha", f"{flag}={text}"], smollm2_path, capsys)
    assert flag in err or name in err, (flag, text, err[-500:])
    assert "Traceback" not in err


@FUZZ
@given(opts=good_configs, as_flags=st.booleans())
def test_valid_combination_parses_and_builds(opts, as_flags, smollm2_path):
    if as_flags:
        argv = ["--scheduler", "medha"] + [
            f"--medha-{k.replace('_', '-')}={_flag_text(v)}" for k, v in opts.items()]
    else:
        argv = ["--scheduler", "medha", "--additional-config", json.dumps({"medha": opts})]
    ea = _parse(argv, smollm2_path)
    assert ea.additional_config["medha"] == opts
    cfg = MedhaConfig.from_dict(ea.additional_config["medha"])
    for k, v in opts.items():
        assert getattr(cfg, k) == v
    # Platform defaults fill the rest; the solo budget is never below the target.
    r = cfg.resolve(on_gpu=False)
    assert r.target_batch_time_s > 0 and r.solo_batch_time_s >= r.target_batch_time_s
