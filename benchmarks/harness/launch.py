"""Start and stop `vllm serve` on loopback (used by the demo, tests and
benchmarks): free port, readiness wait, log file, clean shutdown of the whole
process group."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_executable() -> str:
    exe = Path(sys.executable).with_name("vllm")
    return str(exe) if exe.exists() else (shutil.which("vllm") or "vllm")


class VllmServer:
    """`with VllmServer(model, ["--scheduler", "medha"]) as srv: srv.base_url`"""

    def __init__(self, model: str, args: list[str] | None = None, log_path: str | None = None,
                 env: dict | None = None, startup_timeout: float = 600.0,
                 served_name: str | None = None, cpus: list[int] | None = None) -> None:
        self.model = model
        self.args = list(args or [])
        self.port = free_port()
        self.log_path = log_path or f"/tmp/medha-vllm-serve-{self.port}.log"
        self.env = {**os.environ, **(env or {})}
        # NOTE(medha): without it, vLLM's CPU backend reserves 92 % of the
        # NUMA node's memory and refuses to start when anything else runs.
        self.env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        self.startup_timeout = startup_timeout
        self.served_name = served_name
        self.proc: subprocess.Popen | None = None
        # Pin the whole server (API server, engine core, workers) to these cores.
        self.cpus = cpus

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cmd(self) -> list[str]:
        cmd = [vllm_executable(), "serve", self.model, "--host", "127.0.0.1",
               "--port", str(self.port)]
        if self.served_name:
            cmd += ["--served-model-name", self.served_name]
        return cmd + self.args

    def start(self) -> "VllmServer":
        self._log = open(self.log_path, "w")
        cpus = self.cpus
        self.proc = subprocess.Popen(self.cmd(), stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}; "
                                   f"log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"vllm serve not ready in {self.startup_timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self.proc = None
        self._log.close()

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
