"""Merging attention states: exactness, empty shards, associativity, LSE conventions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medha_vllm.kernels import (
    convert_lse,
    lse_from_flashinfer,
    lse_to_flashinfer,
    merge_attn_states,
    merge_attn_states_reference,
)
import medha_vllm.kernels.merge as merge_mod
from medha_vllm.kernels.testing import assert_states_close

pytestmark = pytest.mark.cpu

# (out atol, out rtol, lse atol): merge arithmetic is float32 in every path,
# so only the final rounding to the output dtype differs.
TOL = {
    torch.float32: (1e-6, 1e-6, 1e-6),
    torch.float16: (2e-3, 1e-3, 1e-6),
    torch.bfloat16: (1.6e-2, 8e-3, 1e-6),
}


def random_states(n, tokens=5, heads=3, head_size=64, dtype=torch.float32, empty_frac=0.3, seed=0):
    """N states; about empty_frac of the (state, head, token) LSEs are -inf (their outputs 0)."""
    gen = torch.Generator().manual_seed(seed)
    lses = torch.randn(n, heads, tokens, generator=gen) * 4
    lses[torch.rand(n, heads, tokens, generator=gen) < empty_frac] = -math.inf
    if empty_frac > 0:
        lses[:, 0, 0] = -math.inf  # one row empty in every state
    outs = torch.randn(n, tokens, heads, head_size, generator=gen)
    outs = outs.masked_fill(torch.isneginf(lses).permute(0, 2, 1)[..., None], 0.0)
    return outs.to(dtype), lses


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 17])
@pytest.mark.parametrize("small", [True, False], ids=["broadcast", "einsum"])
def test_merge_matches_reference(monkeypatch, small, n, dtype):
    if not small:  # force the large-state code path
        monkeypatch.setattr(merge_mod, "SMALL_MERGE_ELEMENTS", 0)
    backend = "cpu" if small else "torch"
    outs, lses = random_states(n, dtype=dtype, seed=n)
    want = merge_attn_states_reference(outs, lses)
    got = merge_attn_states(outs, lses, backend=backend)
    assert got[0].dtype == dtype
    assert_states_close(got, want, *TOL[dtype], what=f"N={n}")
    # list input == stacked input
    got_list = merge_attn_states(list(outs), list(lses), backend=backend)
    assert_states_close(got_list, got, 0, 0, 0)


def test_all_empty_rows_are_zero_and_neginf():
    outs, lses = random_states(4, empty_frac=1.0)
    out, lse = merge_attn_states(outs, lses)
    assert torch.isneginf(lse).all() and (out == 0).all()


def test_single_state_is_identity():
    outs, lses = random_states(1)
    out, lse = merge_attn_states(outs, lses)
    assert torch.equal(out, outs[0]) and torch.equal(lse, lses[0])


def test_matches_attention_over_concatenated_keys():
    """merge(attn(K1), attn(K2)) == attn([K1; K2]), from first principles."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 50, 16, generator=gen) for _ in range(3))  # [heads, keys, dim]
    q = q[:, :7]

    def attn(kk, vv):
        s = q @ kk.transpose(1, 2)
        return (s.softmax(-1) @ vv).transpose(0, 1), s.logsumexp(-1)  # [T, H, D], [H, T]

    parts = [attn(k[:, a:b], v[:, a:b]) for a, b in [(0, 11), (11, 12), (12, 50)]]
    got = merge_attn_states([p[0] for p in parts], [p[1] for p in parts])
    assert_states_close(got, attn(k, v), 1e-6, 1e-6, 1e-6)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 9), seed=st.integers(0, 2**16), data=st.data())
def test_merge_is_associative_and_commutative(n, seed, data):
    outs, lses = random_states(n, seed=seed)
    flat = merge_attn_states(outs, lses)
    # Random binary tree over a random order of the states.
    order = data.draw(st.permutations(range(n)))
    pool = [(outs[i], lses[i]) for i in order]
    while len(pool) > 1:
        i = data.draw(st.integers(0, len(pool) - 2))
        a, b = pool[i], pool[i + 1]
        pool[i : i + 2] = [merge_attn_states([a[0], b[0]], [a[1], b[1]])]
    assert_states_close(pool[0], flat, 2e-6, 2e-6, 2e-6, what=f"order={order}")


def test_lse_conversions_round_trip_and_keep_neginf():
    _, lses = random_states(1, tokens=6, heads=4)
    lse = lses[0]  # [heads, tokens] natural
    fi = lse_to_flashinfer(lse)
    assert fi.shape == (6, 4)
    torch.testing.assert_close(fi, lse.t() / math.log(2))  # includes -inf positions
    torch.testing.assert_close(lse_from_flashinfer(fi), lse)
    torch.testing.assert_close(convert_lse(lse, "vllm", "flashinfer"), fi)
    with pytest.raises(ValueError):
        convert_lse(lse, "vllm", "base10")


def test_flashinfer_convention_merge_agrees_after_conversion():
    """A merge written in FlashInfer's convention (base 2, [tokens, heads]) agrees
    with ours once LSEs are converted at the boundary; without conversion it does not."""
    outs, lses = random_states(3, empty_frac=0.0)

    def merge_base2_tokens_heads(o, s2):  # s2: [N, tokens, heads] base 2
        w = torch.softmax(s2 * math.log(2), dim=0)
        return torch.einsum("nth,nthd->thd", w, o), torch.logsumexp(s2 * math.log(2), 0) / math.log(2)

    o_fi, s_fi = merge_base2_tokens_heads(outs, torch.stack([lse_to_flashinfer(x) for x in lses]))
    ours = merge_attn_states(outs, lses)
    assert_states_close((o_fi, lse_from_flashinfer(s_fi)), ours, 1e-6, 1e-6, 1e-5)
    o_bad, _ = merge_base2_tokens_heads(outs, lses.transpose(1, 2))  # natural fed as base 2
    assert not torch.allclose(o_bad, ours[0], atol=1e-3)


def test_rejects_mismatched_inputs():
    outs, lses = random_states(3)
    with pytest.raises(ValueError):
        merge_attn_states(outs, lses[:2])
    with pytest.raises(ValueError):
        merge_attn_states(outs, lses.transpose(1, 2))
