"""FlashInfer adapters (GPU only, used where ``flashinfer`` is installed).

FlashInfer's attention states use a BASE-2 LSE laid out ``[tokens, heads]``;
this package uses natural log ``[heads, tokens]`` (see ``lse.py``). The
conversion happens here, at the boundary, and nowhere else.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

from .lse import base2_to_natural, natural_to_base2
from .merge import _as_stacks


def flashinfer_available() -> bool:
    """True when the ``flashinfer`` package can be imported (does not import it)."""
    return importlib.util.find_spec("flashinfer") is not None


def merge_attn_states_flashinfer(
    outputs: Sequence[torch.Tensor] | torch.Tensor,
    lses: Sequence[torch.Tensor] | torch.Tensor,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``flashinfer.merge_states`` behind this package's convention.

    outputs: N x [num_tokens, num_heads, head_size] (or stacked), CUDA,
    fp16/bf16 (FlashInfer's supported dtypes); lses: N x [num_heads,
    num_tokens] float32 natural log (or stacked). Returns (out [num_tokens,
    num_heads, head_size], lse [num_heads, num_tokens] float32 natural log).
    """
    import flashinfer  # noqa: PLC0415 - optional dependency, GPU only

    o, s = _as_stacks(outputs, lses)
    # FlashInfer wants v [tokens, N, heads, head_size] and s [tokens, N, heads] in base 2.
    v_fi = o.permute(1, 0, 2, 3).contiguous()
    s_fi = natural_to_base2(s).permute(2, 0, 1).contiguous()
    merged_v, merged_s = flashinfer.merge_states(v_fi, s_fi)
    out = merged_v if out_dtype is None else merged_v.to(out_dtype)
    # NOTE(medha): states that are all empty come back as NaN/garbage from
    # some FlashInfer versions; pin them to the documented (0, -inf).
    empty = torch.isneginf(s).all(dim=0)  # [heads, tokens]
    lse = base2_to_natural(merged_s.float()).transpose(0, 1).contiguous()
    if bool(empty.any()):
        lse = lse.masked_fill(empty, float("-inf"))
        out = out.masked_fill(empty.transpose(0, 1)[..., None], 0.0)
    return out, lse
