"""The package's own tiny demo model: a 4-block Llama trained briefly on :mod:`hf_layerif.demo.corpus`.

Training is deterministic (fixed seeds, one thread) and takes well under a minute on 2 CPU cores. The
trained model is cached as a normal Hugging Face model folder (``config.json``, ``model.safetensors``,
tokenizer files) in ``$HF_LAYERIF_CACHE`` (default ``~/.cache/hf_layerif``), so later runs load it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..utils.io import write_json
from ..utils.logging import get_logger
from .corpus import TASKS, VOCAB, build_tokenizer, make_task_samples

logger = get_logger(__name__)

DEMO_VERSION = "v2"
DEMO_TRAIN_STEPS = 500
DEMO_BATCH_SIZE = 32


def demo_cache_dir() -> Path:
    root = os.environ.get("HF_LAYERIF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_layerif")
    return Path(root) / f"demo-llama-{DEMO_VERSION}"


def demo_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       bos_token_id=VOCAB.index("<bos>"), eos_token_id=VOCAB.index("<eos>"),
                       pad_token_id=VOCAB.index("<pad>"), tie_word_embeddings=True)


def train_demo_model(steps: int = DEMO_TRAIN_STEPS, seed: int = 0, progress: bool = True):
    """Train the demo model from scratch; returns (model, per-task final losses)."""
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    from ..data import InfluenceCollator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(demo_config())
        model.train()
        data = make_task_samples(list(TASKS), steps * DEMO_BATCH_SIZE // 4, seed=seed)
        collate = InfluenceCollator(VOCAB.index("<pad>"))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
        gen = torch.Generator().manual_seed(seed)
        for _ in tqdm(range(steps), desc="training the demo model", disable=not progress):
            idx = torch.randint(0, len(data), (DEMO_BATCH_SIZE,), generator=gen).tolist()
            batch = collate([data[i] for i in idx])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        losses = {}
        with torch.no_grad():
            for task in TASKS:
                batch = collate(make_task_samples(task, 64, seed=seed + 1000))
                losses[task] = float(model(**batch).loss)
    finally:
        torch.set_num_threads(threads)
    return model, losses


def load_demo_model(cache_dir: str | os.PathLike | None = None, progress: bool = True):
    """Load the trained demo model and tokenizer, training and caching them on first use."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = Path(cache_dir) if cache_dir is not None else demo_cache_dir()
    if not (path / "model.safetensors").exists():
        started = time.time()
        model, losses = train_demo_model(progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=path.parent))
        try:
            model.save_pretrained(tmp)
            build_tokenizer().save_pretrained(tmp)
            write_json(tmp / "demo_training.json", {"tasks": list(TASKS), "steps": DEMO_TRAIN_STEPS,
                                                    "batch_size": DEMO_BATCH_SIZE, "final_loss_per_task": losses,
                                                    "seconds": round(time.time() - started, 2)})
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("Trained the demo model in %.1f s (loss per task %s); cached in %s", time.time() - started, losses, path)
    model = LlamaForCausalLM.from_pretrained(path)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)
