"""Log-sum-exp conventions and conversions between libraries.

Convention of this package (the vLLM one): an attention state is
``(out, lse)`` with

* ``out``: ``[num_tokens, num_heads, head_size]``, normalised attention output;
* ``lse``: ``[num_heads, num_tokens]`` float32, NATURAL log of the softmax
  denominator, ``lse = log(sum_k exp(scale * q.k))``; ``-inf`` when the token
  saw no key at all (empty shard, fully masked row), and then ``out == 0``.

Other libraries differ:

* FlashInfer (``merge_state``, ``merge_states``, ``return_lse=True``):
  BASE 2, ``[num_tokens, num_heads]``.
* torch SDPA on CPU (``_scaled_dot_product_flash_attention_for_cpu``):
  natural log, ``[batch, num_heads, q_len]``.
* vLLM (``merge_attn_states``, FlashAttention ``softmax_lse``):
  natural log, ``[num_heads, num_tokens]`` -- same as ours.

NOTE(medha): mixing bases or layouts silently is the classic bug (the result
looks plausible but the softmax weights of the shards are wrong); convert at
the boundary with the helpers below and never elsewhere.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)
LOG2E = 1.0 / LN2

# Names used in docstrings and in the helpers' ``fmt`` arguments.
LSE_FORMATS = ("vllm", "flashinfer")


def natural_to_base2(lse: torch.Tensor) -> torch.Tensor:
    """``log(x)`` -> ``log2(x)``; keeps ``-inf``. Any shape, float32."""
    return lse * LOG2E


def base2_to_natural(lse: torch.Tensor) -> torch.Tensor:
    """``log2(x)`` -> ``log(x)``; keeps ``-inf``. Any shape, float32."""
    return lse * LN2


def lse_to_flashinfer(lse: torch.Tensor) -> torch.Tensor:
    """Ours/vLLM ``[num_heads, num_tokens]`` natural -> FlashInfer ``[num_tokens, num_heads]`` base 2.

    Returns a contiguous float32 tensor.
    """
    return natural_to_base2(lse.float()).transpose(0, 1).contiguous()


def lse_from_flashinfer(lse: torch.Tensor) -> torch.Tensor:
    """FlashInfer ``[num_tokens, num_heads]`` base 2 -> ours ``[num_heads, num_tokens]`` natural.

    Returns a contiguous float32 tensor.
    """
    return base2_to_natural(lse.float()).transpose(0, 1).contiguous()


def lse_from_torch_sdpa(lse: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
    """torch CPU flash ``[1, num_heads, q_len]`` natural -> ours ``[num_heads, q_len]``.

    ``num_tokens`` trims padding rows when given.
    """
    if lse.dim() == 3:
        if lse.shape[0] != 1:
            raise ValueError("batch must be 1 to convert a torch SDPA lse")
        lse = lse[0]
    return lse if num_tokens is None else lse[:, :num_tokens]


def convert_lse(lse: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """Convert a 2-D LSE between named formats (see ``LSE_FORMATS``)."""
    for name in (src, dst):
        if name not in LSE_FORMATS:
            raise ValueError(f"unknown LSE format {name!r}; accepted: {LSE_FORMATS}")
    if src == dst:
        return lse
    return lse_to_flashinfer(lse) if dst == "flashinfer" else lse_from_flashinfer(lse)
