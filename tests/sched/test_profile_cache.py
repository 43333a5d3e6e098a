"""Bad state on disk, on vLLM's real Scheduler (no engine): a corrupt cached
profile is re-profiled with one warning, never a crash; an unwritable profile
directory or timeline path is a start-up error naming the option."""

from __future__ import annotations

import json
import logging
import math

import pytest
from harness import make_scheduler

from medha_vllm.config import MedhaConfigError
from medha_vllm.policy.predictor import FEATURES
from medha_vllm.profiler import PROFILE_FORMAT, BadProfile, load_profile

GOOD = {"format": PROFILE_FORMAT, "key": {},
        "predictor": {"features": list(FEATURES), "coef": [1e-3, 1e-5, 0.0, 1e-4, 0.0, 0.0]},
        "stats": {"heldout_median_ape": 0.05}}

CORRUPT = {
    "not JSON": "{ this is not json",
    "not an object": "[1, 2, 3]",
    "old format": json.dumps({**GOOD, "format": PROFILE_FORMAT - 1}),
    "missing keys": json.dumps({"format": PROFILE_FORMAT}),
    "wrong shape": json.dumps({**GOOD, "predictor": [1, 2]}),
    "NaN coefficients": json.dumps({**GOOD, "predictor": {**GOOD["predictor"],
                                                         "coef": [math.nan] * 6}}),
    "too few coefficients": json.dumps({**GOOD, "predictor": {**GOOD["predictor"],
                                                             "coef": [1e-3]}}),
    "negative coefficient": json.dumps({**GOOD, "predictor": {**GOOD["predictor"],
                                                             "coef": [-1.0] + [0.0] * 5}}),
    "text error": json.dumps({**GOOD, "stats": {"heldout_median_ape": "low"}}),
    "not UTF-8": b"\xff\xfe\x00garbage",
}


def test_the_good_profile_loads(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(GOOD))
    assert load_profile(p)["predictor"]["coef"] == GOOD["predictor"]["coef"]
    assert load_profile(tmp_path / "missing.json") is None  # no file: nothing to say


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_file_is_named_bad(kind, tmp_path):
    p = tmp_path / "p.json"
    content = CORRUPT[kind]
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BadProfile):
        load_profile(p)


class _Records(logging.Handler):
    """vLLM's loggers do not propagate to the root (caplog): listen on "vllm"."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("vllm").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("vllm").removeHandler(self)


def _profile_path(synthetic_path, profile_dir) -> object:
    s = make_scheduler(synthetic_path, medha={"profile": True, "profile_dir": str(profile_dir)})
    return s.profile.path


@pytest.mark.parametrize("kind", ["not JSON", "missing keys", "NaN coefficients",
                                  "wrong shape"])
def test_the_scheduler_re_profiles_a_corrupt_cache_with_one_warning(kind, synthetic_path,
                                                                    tmp_path):
    path = _profile_path(synthetic_path, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CORRUPT[kind])
    with _Records() as log:
        s = make_scheduler(synthetic_path, medha={"profile": True, "profile_dir": str(tmp_path)})
    warnings = [m for m in log.messages if "ignoring the cached profile" in m]
    assert len(warnings) == 1, log.messages
    assert str(path) in warnings[0]
    assert s.profile.active  # it will profile again (and overwrite the file)
    # With a good file in its place the same scheduler loads it and stays quiet.
    path.write_text(json.dumps(GOOD))
    with _Records() as log:
        s = make_scheduler(synthetic_path, medha={"profile": True, "profile_dir": str(tmp_path)})
    assert not s.profile.active and s.predictor.coef == GOOD["predictor"]["coef"]
    assert not [m for m in log.messages if "ignoring the cached profile" in m]


def test_an_unwritable_profile_dir_is_a_start_up_error(synthetic_path, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(MedhaConfigError, match="'profile_dir'"):
        make_scheduler(synthetic_path, medha={"profile": True,
                                              "profile_dir": str(blocker / "profiles")})


@pytest.mark.parametrize("where", ["under a file", "a directory"])
def test_an_unwritable_timeline_path_is_a_start_up_error(where, synthetic_path, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    path = blocker / "t.json" if where == "under a file" else tmp_path
    with pytest.raises(MedhaConfigError, match="'timeline_path'"):
        make_scheduler(synthetic_path, medha={"timeline_path": str(path)})
