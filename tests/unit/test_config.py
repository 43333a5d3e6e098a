import pytest

from medha_vllm.config import MedhaConfig, MedhaConfigError


def test_defaults_resolve_per_platform():
    assert MedhaConfig().resolve(on_gpu=True).target_batch_time_s == 0.05
    cpu = MedhaConfig().resolve(on_gpu=False)
    assert cpu.target_batch_time_s == 0.15 and cpu.tbt_slo_s == pytest.approx(0.225)
    assert MedhaConfig(target_batch_time_s=0.2, tbt_slo_s=1.0).resolve(False).tbt_slo_s == 1.0


@pytest.mark.parametrize("bad, words", [
    ({"target_batch_time_s": 0}, ["target_batch_time_s", "(0.0, 60.0]"]),
    ({"target_batch_time_s": "fast"}, ["target_batch_time_s", "number"]),
    ({"min_chunk_size": 0}, ["min_chunk_size", "[1,"]),
    ({"min_chunk_size": 3.5}, ["min_chunk_size", "integer"]),
    ({"space_sharing_max_slack": 1.5}, ["space_sharing_max_slack", "[0.0, 1.0]"]),
    ({"space_sharing": "yes"}, ["space_sharing", "true or false"]),
    ({"max_chunk_size": 16}, ["max_chunk_size", "min_chunk_size"]),
    ({"chunk": 32}, ["unknown medha option", "'chunk'", "min_chunk_size"]),
    ({"min_request_deadline_s": -1}, ["min_request_deadline_s", "[0.0, 86400.0]"]),
    ({"client_slos": "no"}, ["client_slos", "true or false"]),
])
def test_bad_values_name_option_and_range(bad, words):
    with pytest.raises(MedhaConfigError) as e:
        MedhaConfig.from_dict(bad)
    for w in words:
        assert w in str(e.value)


def test_from_vllm_config_reads_additional_config():
    class VC:
        additional_config = {"medha": {"target_batch_time_s": 0.3}}
    assert MedhaConfig.from_vllm_config(VC()).target_batch_time_s == 0.3
    VC.additional_config = {"medha": [1]}
    with pytest.raises(MedhaConfigError):
        MedhaConfig.from_vllm_config(VC())


def test_client_deadline_rules():
    from medha_vllm.policy.work import DeadlineRules

    rules = DeadlineRules(ttft_multiplier=1.5, ttft_floor_s=0.5)
    # Default floor: the request's own length-aware deadline.
    assert rules.client_ttft_floor(10.0) == 15.0 and rules.client_ttft_floor(0.1) == 0.5
    assert DeadlineRules(client_ttft_floor_s=0.0).client_ttft_floor(10.0) == 0.0


@pytest.mark.parametrize("xargs, field", [
    ({"ttft_deadline_s": -1}, "ttft_deadline_s"), ({"ttft_deadline_s": 0}, "ttft_deadline_s"),
    ({"ttft_deadline_s": float("nan")}, "ttft_deadline_s"),
    ({"ttft_deadline_s": float("inf")}, "ttft_deadline_s"),
    ({"ttft_deadline_s": "2"}, "ttft_deadline_s"), ({"ttft_deadline_s": True}, "ttft_deadline_s"),
    ({"ttft_deadline_s": 2, "tbt_deadline_s": [1]}, "tbt_deadline_s")])
def test_door_check_names_the_field(xargs, field):
    from vllm.exceptions import VLLMValidationError

    from medha_vllm.slo_door import check_xargs

    with pytest.raises(VLLMValidationError) as e:
        check_xargs(xargs)
    assert e.value.parameter == f"vllm_xargs.{field}" and field in str(e.value)


def test_door_check_passes_valid_and_foreign_fields():
    from medha_vllm.slo_door import check_xargs

    check_xargs(None)
    check_xargs({"ttft_deadline_s": 2, "tbt_deadline_s": 0.1, "other_plugin_arg": -1})
