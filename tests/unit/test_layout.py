"""Pipeline layout checks and CPU worker placement (pure functions)."""

import pytest

from medha_vllm.layout import LayoutError, check_pipeline_layout, cpu_thread_binding


@pytest.mark.parametrize("layers, pp, parts", [
    (4, 1, [4]), (4, 2, [2, 2]), (4, 4, [1, 1, 1, 1]), (30, 4, [7, 8, 8, 7]), (5, 3, [2, 2, 1])])
def test_even_split_follows_vllm(layers, pp, parts):
    assert check_pipeline_layout(layers, pp) == parts
    assert sum(parts) == layers


def test_split_matches_vllm_get_pp_indices(monkeypatch):
    monkeypatch.delenv("VLLM_PP_LAYER_PARTITION", raising=False)
    from vllm.distributed.utils import get_pp_indices

    for layers in range(1, 33):
        for pp in range(1, layers + 1):
            ours = check_pipeline_layout(layers, pp)
            theirs = [e - s for s, e in (get_pp_indices(layers, r, pp) for r in range(pp))]
            assert ours == theirs, (layers, pp)


@pytest.mark.parametrize("layers, pp, partition, words", [
    (4, 8, None, ["-pp", "8", "at least 8 hidden layers", "has 4"]),
    (4, 2, "3,2", ["VLLM_PP_LAYER_PARTITION", "5 layers", "has 4"]),
    (4, 3, "2,2", ["lists 2 stages", "is 3"]),
    (4, 2, "4,0", ["without layers"]),
    (4, 2, "a,b", ["not a comma-separated list"]),
    (4, 0, None, ["must be >= 1"]),
])
def test_impossible_layouts_name_the_problem(layers, pp, partition, words):
    with pytest.raises(LayoutError) as e:
        check_pipeline_layout(layers, pp, partition)
    for w in words:
        assert w in str(e.value)


def test_cpu_thread_binding():
    assert cpu_thread_binding(2, [0, 1]) == "0|1"
    assert cpu_thread_binding(2, list(range(8))) == "0-3|4-7"
    assert cpu_thread_binding(3, [0, 1]) == "0|1|0"
    assert cpu_thread_binding(2, [0, 2, 4, 6]) == "0,2|4,6"
