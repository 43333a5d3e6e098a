"""Bad Medha options stop `vllm serve` at start-up with a message naming the
option and its accepted range (argument parsing: no engine is started). The
real command once; every other bad value through the same parser in process
(tests/unit/test_patches.py), which is what `vllm serve` runs first. The
commands run together with the suite's other refused start-ups (conftest.py)."""

import pytest

pytestmark = pytest.mark.e2e


def test_serve_rejects_bad_option(refused_startups):
    out = refused_startups["bad_option"]
    assert out.returncode == 2, out.stderr[-2000:]
    for w in ("target_batch_time_s", "(0.0, 60.0]"):
        assert w in out.stderr, (w, out.stderr[-2000:])


def test_serve_rejects_an_unwritable_timeline_path(refused_startups):
    out = refused_startups["unwritable_timeline"]
    assert out.returncode == 2, out.stderr[-2000:]
    assert "medha option 'timeline_path': cannot write to its directory" in out.stderr, \
        out.stderr[-2000:]
    assert "Traceback" not in out.stderr
