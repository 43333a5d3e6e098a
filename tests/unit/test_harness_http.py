"""The harness's HTTP clients drop idle keep-alive connections before
`vllm serve` does (benchmarks/harness/loadgen.py::KEEPALIVE_EXPIRY_S). With equal
timeouts a request sent as the server closes its connection fails in the client
only (measured with uvicorn and httpx at 1 s both: 1 request in 60 failed with
ReadError; client expiry 0.4 s: 0 in 60)."""

import ast
import pathlib

import httpx
import vllm.envs

from benchmarks.harness.loadgen import http_limits

HARNESS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "harness"


def test_client_keepalive_expires_before_the_servers():
    limits = http_limits()
    assert isinstance(limits, httpx.Limits)
    assert limits.keepalive_expiry is not None
    assert limits.keepalive_expiry < vllm.envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE - 1.0


def test_every_harness_client_uses_http_limits():
    """Each httpx client built in benchmarks/harness gets its `limits` from
    a variable or call that comes from http_limits()."""
    seen = 0
    for path in sorted(HARNESS.glob("*.py")):
        tree = ast.parse(path.read_text())
        from_http_limits = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                            and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "http_limits"
                            for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("AsyncClient", "Client"):
                seen += 1
                kw = {k.arg: k.value for k in node.keywords}
                lim = kw.get("limits")
                ok = (isinstance(lim, ast.Call) and getattr(lim.func, "id", "") == "http_limits") or \
                     (isinstance(lim, ast.Name) and lim.id in from_http_limits)
                assert ok, f"{path.name}:{node.lineno}: httpx client without limits=http_limits(...)"
    assert seen >= 5
