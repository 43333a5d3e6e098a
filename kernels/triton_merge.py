"""Triton merge of N attention states (GPU path; also runs under TRITON_INTERPRET=1).

One program per (token, head) reads the N log-sum-exps and N output rows
once, in registers: no stacked temporaries, so merging KVP partials costs
one read of the states and one write of the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .merge import _as_stacks


@triton.jit
def _merge_states_kernel(
    out_ptr, out_lse_ptr, o_ptr, lse_ptr,
    num_states,
    stride_on, stride_ot, stride_oh, stride_od,
    stride_ln, stride_lh, stride_lt,
    stride_rt, stride_rh, stride_rd,
    stride_sh, stride_st,
    HEAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    N_PAD: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    n = tl.arange(0, N_PAD)
    n_ok = n < num_states
    d = tl.arange(0, HEAD_PAD)
    d_ok = d < HEAD
    x = tl.load(lse_ptr + n * stride_ln + h * stride_lh + t * stride_lt, mask=n_ok, other=float("-inf"))
    m = tl.max(x, 0)
    # NOTE(medha): all states empty -> shift by 0 so weights are exp(-inf) = 0, not NaN.
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(x - m)  # [N_PAD], 0 for empty or padded states
    total = tl.sum(w, 0)
    o = tl.load(
        o_ptr + n[:, None] * stride_on + t * stride_ot + h * stride_oh + d[None, :] * stride_od,
        mask=n_ok[:, None] & d_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    inv = tl.where(total > 0.0, 1.0 / total, 0.0)
    merged = tl.sum(w[:, None] * o, 0) * inv
    tl.store(out_ptr + t * stride_rt + h * stride_rh + d * stride_rd, merged.to(out_ptr.dtype.element_ty), mask=d_ok)
    tl.store(out_lse_ptr + h * stride_sh + t * stride_st, m + tl.log(total))


def merge_attn_states_triton(
    outputs: Sequence[torch.Tensor] | torch.Tensor,
    lses: Sequence[torch.Tensor] | torch.Tensor,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``merge.merge_attn_states_torch`` (same arguments and results).

    outputs: N x [num_tokens, num_heads, head_size] (or stacked [N, ...]);
    lses: N x [num_heads, num_tokens] float32 natural log (or stacked).
    Returns (out [num_tokens, num_heads, head_size] out_dtype, lse
    [num_heads, num_tokens] float32 natural log; -inf where all are empty).
    """
    o, s = _as_stacks(outputs, lses)
    n, num_tokens, num_heads, head = o.shape
    out = torch.empty((num_tokens, num_heads, head), dtype=out_dtype or o.dtype, device=o.device)
    out_lse = torch.empty((num_heads, num_tokens), dtype=torch.float32, device=o.device)
    if num_tokens == 0:
        return out, out_lse
    _merge_states_kernel[(num_tokens, num_heads)](
        out, out_lse, o, s, n,
        *o.stride(), *s.stride(), *out.stride(), *out_lse.stride(),
        HEAD=head, HEAD_PAD=triton.next_power_of_2(head), N_PAD=max(2, triton.next_power_of_2(n)),
    )  # fmt: skip
    return out, out_lse
