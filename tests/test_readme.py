"""The README's Python blocks run as written, in order, in a fresh process: on stories260K instead of a 7B model,
local TinyStories and C4 files instead of Hub downloads, a Hub-compatible server on 127.0.0.1 instead of the Hub,
and smaller sizes. Every replacement must match the README exactly, so a README edit that breaks the tour fails
here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, STORIES260K, TINYSTORIES_VAL, require_shared
from hub_server import start_hub_server

README = Path(__file__).resolve().parents[1] / "README.md"

# (text in the README, what the test runs instead): only sizes, names of remote resources and devices change
REPLACEMENTS = [
    ('MODEL = "mistralai/Mistral-7B-v0.1"', f"MODEL = {str(STORIES260K)!r}"),
    ('load_dataset("roneneldan/TinyStories", split="validation[:288]")["text"]',
     f"[p.strip() for p in open({str(TINYSTORIES_VAL)!r}, encoding='utf-8').read().split(chr(10) * 2) if p.strip()][:72]"),
    ("stories[:256], stories[256:]", "stories[:64], stories[64:]"),
    ('dtype="bfloat16", device_map="auto"', 'dtype="float32"'),
    ("fit_steps=100,", "fit_steps=5,"),
    ('calibration="c4"', f"calibration={str(SHARED_DATA / 'text' / 'c4' / 'c4_en_train00000_first1000.jsonl')!r}, "
                         "nsamples=4, seqlen=128"),
]


def readme_program() -> str:
    text = README.read_text(encoding="utf-8")
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    for old, new in REPLACEMENTS:
        assert old in code, f"the README no longer contains {old!r}: update the tour test with it"
        code = code.replace(old, new)
    return code + ("\nprint('README TOUR DONE', scores.num_blocks, report.global_sparsity()['requested'], "
                   "report.global_sparsity()['achieved'])\n")


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
    require_shared()
    server, state, url = start_hub_server()
    try:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(HF_ENDPOINT=url, HF_TOKEN="hf_fake_token_for_tests_123", HF_HOME=str(tmp_path / "hf_home"),
                   OMP_NUM_THREADS="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]))
        done = subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1)\n" + readme_program()],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    tour = re.search(r"README TOUR DONE (\d+) (\S+) (\S+)", done.stdout)
    assert tour, done.stdout[-2000:]
    num_blocks, requested, achieved = int(tour[1]), float(tour[2]), float(tour[3])
    assert num_blocks == 5
    # the allocation keeps the mean ratio at the target exactly; each matrix then rounds its own count (half a
    # weight each), so the achieved share may differ in the 5th decimal between CPUs (scores differ in the last bits)
    assert requested == pytest.approx(0.5, abs=1e-9)
    assert achieved == pytest.approx(0.5, abs=1e-4)  # 35 matrices x 0.5 weight / ~250k weights
    assert "you/mistral-stories-experts" in state.repos  # the push went to the (local) Hub in one commit
    assert (tmp_path / "scores" / "stories" / "layerif_scores.json").exists()
    assert (tmp_path / "wanda-50" / "model.safetensors").exists() and (tmp_path / "moe-adapter").exists()
