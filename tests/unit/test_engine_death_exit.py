"""patches/engine_death_exit.py records an engine death only when vLLM's own
terminate_if_errored stops the server for it (so a keep-alive setting, e.g.
VLLM_KEEP_ALIVE_ON_ENGINE_DEATH, or vLLM 0.33's should_keep_api_server_alive,
keeps the exit status vLLM's)."""

import types

import pytest


@pytest.fixture
def died(monkeypatch):
    from medha_vllm.patches import engine_death_exit as p

    monkeypatch.setitem(p.ENGINE_DIED, "dead", False)
    return p


def _engine(errored=True, running=False):
    return types.SimpleNamespace(errored=errored, is_running=running)


def test_a_dead_engine_that_stops_the_server_is_recorded(died):
    def vllm_terminate(server, engine):
        server.should_exit = True

    server = types.SimpleNamespace(should_exit=False)
    died._wrap_terminate(vllm_terminate)(server, _engine())
    assert died.ENGINE_DIED["dead"] and server.should_exit


def test_kept_alive_or_healthy_is_not_recorded(died):
    def keep_alive(server, engine):
        pass  # vLLM decided to keep serving

    died._wrap_terminate(keep_alive)(types.SimpleNamespace(should_exit=False), _engine())
    assert not died.ENGINE_DIED["dead"]
    stop = lambda server, engine: setattr(server, "should_exit", True)  # noqa: E731
    died._wrap_terminate(stop)(types.SimpleNamespace(should_exit=True), _engine(errored=False))
    assert not died.ENGINE_DIED["dead"]
