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
