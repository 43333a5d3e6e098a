"""The attention-kernel choice (medha_vllm/attention/selection.py): policy with fake timings,
refusal reasons, the per-step lookup, the on-disk verdict cache, and the option's validation."""

from __future__ import annotations

import pytest

from medha_vllm.attention import selection as sel
from medha_vllm.config import MedhaConfig, MedhaConfigError

SHAPE = sel.AttentionShape(num_heads=4, num_kv_heads=2, head_size=64, block_size=128, dtype="float32",
                           kv_cache_dtype="auto", threads=2, context=65536)


def fake_times(native_wins):
    """Timings on the full grid where the native kernel wins exactly `native_wins`."""
    cells = [(ctx, c) for ctx in sel.GRID_CONTEXTS for c in sel.MEASURE_CHUNKS]
    return {"vllm": {k: 1.0 for k in cells},
            "medha": {k: (0.8 if k in native_wins else 1.25) for k in cells}}


def test_vllm_option_is_vllm_whatever_the_model():
    for why in (None, "dtype float16"):
        choice = sel.decide("vllm", why, lambda: pytest.fail("must not measure"))
        assert choice.backend == "vllm" and not choice.native_for(1, 100_000)


def test_explicit_medha_refuses_a_model_it_cannot_serve():
    with pytest.raises(sel.MedhaAttentionError, match=r"--medha-attention-backend medha cannot serve "
                                                      r"this model: the model uses ALiBi"):
        sel.decide("medha", "the model uses ALiBi", None)


def test_explicit_medha_serves_every_step_without_measuring():
    choice = sel.decide("medha", None, lambda: pytest.fail("must not measure"))
    assert choice.backend == "medha"
    assert all(choice.native_for(q, kv) for q in (1, 32, 4096) for kv in (1, 5000, 1 << 20))


def test_auto_falls_back_with_the_reason():
    choice = sel.decide("auto", "kv_cache_dtype fp8 (the Medha kernel reads unquantized KV)", None)
    assert choice.backend == "vllm" and "cannot serve this model: kv_cache_dtype fp8" in choice.reason


def test_auto_serves_exactly_the_cells_it_won():
    won = {(16384, 1), (65536, 1), (65536, 32), (65536, 128)}
    choice = sel.decide("auto", None, lambda: fake_times(won))
    assert choice.backend == "medha" and choice.native_cells == frozenset(won)
    # Context rounds down to the grid, query run up; both clamp.
    assert choice.native_for(1, 20_000)          # (16K, 1)
    assert not choice.native_for(2, 20_000)      # (16K, 32)
    assert choice.native_for(100, 70_000)        # (64K, 128)
    assert not choice.native_for(129, 1 << 22)   # (64K, 512)
    assert not choice.native_for(1, 10_000)      # (4K, 1)
    assert not choice.native_for(1, 100)         # below the grid: the 4K row
    assert "64K x 128" in choice.reason and "1.25" in choice.reason


def test_steps_bucket_into_the_contexts_that_were_measured():
    # Measured at 4K, 16K and the deployment's own 64,528: a step at 60K is
    # judged by the 16K row, one at 64,528 by its own.
    cells = [(ctx, c) for ctx in (4096, 16384, 64_528) for c in sel.MEASURE_CHUNKS]
    won = {(64_528, 32)}
    times = {"vllm": {k: 1.0 for k in cells}, "medha": {k: (0.8 if k in won else 1.25) for k in cells}}
    choice = sel.decide("auto", None, lambda: times)
    assert choice.native_for(32, 64_528) and choice.native_for(20, 70_000)
    assert not choice.native_for(32, 60_000) and not choice.native_for(32, 16_384)


def test_auto_keeps_cpu_attn_when_the_native_kernel_never_wins():
    choice = sel.decide("auto", None, lambda: fake_times(set()))
    assert choice.backend == "vllm" and "slower than CPU_ATTN for every step shape" in choice.reason
    assert not choice.native_for(1, 65536)


@pytest.mark.parametrize("change, words", [
    (dict(dtype="float16"), "dtype float16"),
    (dict(kv_cache_dtype="fp8"), "kv_cache_dtype fp8"),
])
def test_refusal_names_the_shape_problem(change, words):
    import dataclasses

    assert words in sel.refusal(dataclasses.replace(SHAPE, **change), sel.LayerFeatures(), lambda: None)


@pytest.mark.parametrize("feature, words", [
    ("sliding_window", "sliding-window"), ("alibi", "ALiBi"), ("softcap", "soft-capping"),
    ("sinks", "sinks"), ("non_decoder", "encoder or cross attention")])
def test_refusal_names_the_layer_feature(feature, words):
    assert words in sel.refusal(SHAPE, sel.LayerFeatures(**{feature: True}), lambda: None)


def test_refusal_passes_the_kernels_own_reason_and_none_when_served():
    assert sel.refusal(SHAPE, sel.LayerFeatures(), lambda: "head_size 80") == "head_size 80"
    assert sel.refusal(SHAPE, sel.LayerFeatures(), lambda: None) is None


def test_grid_follows_max_model_len_and_the_memory_cap():
    import dataclasses

    assert sel.grid_contexts(SHAPE) == (4096, 16384, 65536)
    # The deployment's longest context is measured itself (bench-hol serves 64,528).
    assert sel.grid_contexts(dataclasses.replace(SHAPE, context=64_528)) == (4096, 16384, 64_528)
    assert sel.grid_contexts(dataclasses.replace(SHAPE, context=20_000)) == (4096, 16384, 20_000)
    assert sel.grid_contexts(dataclasses.replace(SHAPE, context=1 << 20)) == (4096, 16384, 65536)
    assert sel.grid_contexts(dataclasses.replace(SHAPE, context=1760)) == (4096,)
    # 8 KV heads x 128 x fp32: a 64K pair of caches would be 1 GiB.
    assert sel.grid_contexts(dataclasses.replace(SHAPE, num_kv_heads=8, head_size=128)) == (4096, 16384)


def test_verdict_is_measured_once_per_host_and_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDHA_CACHE_DIR", str(tmp_path))
    calls = []

    def measure(shape):
        calls.append(shape)
        return fake_times({(4096, 1)})

    monkeypatch.setattr(sel, "measure", measure)
    first = sel.measured_cached(SHAPE)()
    again = sel.measured_cached(SHAPE)()
    assert len(calls) == 1 and again == first and (4096, 1) in again["medha"]
    import dataclasses

    sel.measured_cached(dataclasses.replace(SHAPE, threads=1))()
    assert len(calls) == 2  # another shape: measured again


def test_option_is_validated():
    assert MedhaConfig().attention_backend == "auto"
    assert MedhaConfig.from_dict({"attention_backend": "medha"}).attention_backend == "medha"
    with pytest.raises(MedhaConfigError, match="'attention_backend' = 'fast' is not valid: accepted auto, "
                                               "medha, vllm"):
        MedhaConfig.from_dict({"attention_backend": "fast"})


def test_step_shard_positions_count_cached_and_computed_tokens():
    import torch

    from medha_vllm.attention.backend import step_shard

    # A 3-token chunk after 7 cached/computed tokens, a decode at 5, an idle slot.
    qsl = torch.tensor([0, 3, 4, 4], dtype=torch.int32)
    m = step_shard(qsl, torch.tensor([10, 5, 9]), torch.zeros(3, 2, dtype=torch.int32), True)
    assert m.query_positions.tolist() == [7, 8, 9, 4]
    assert m.kv_lens.dtype == torch.int32 and m.shard_start.tolist() == [0, 0, 0] and m.causal


def test_bf16_emulation_is_named_only_where_it_is_emulated():
    avx2 = "fpu sse2 avx avx2 fma"
    assert "--dtype float32 is recommended" in sel.bf16_emulation_warning("bfloat16", avx2)
    assert sel.bf16_emulation_warning("bfloat16", avx2 + " avx512f avx512_bf16") is None
    assert sel.bf16_emulation_warning("bfloat16", avx2 + " amx_bf16 amx_tile") is None
    assert sel.bf16_emulation_warning("float32", avx2) is None
