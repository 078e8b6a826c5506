"""`accelerate launch --num_processes 2` (CPU, gloo) gives the same scores as one process, through
compute_layer_influence and through LayerInfluenceTrainer."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import random_samples, tiny_llama, with_lora

from hf_layerif import LayerInfluenceScores, compute_layer_influence

SCRIPT = Path(__file__).parent / "distributed_influence_script.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_two_processes_equal_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # --multi_gpu selects accelerate's torchrun launcher; without CUDA, the processes use gloo on the CPU.
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(SCRIPT), str(tmp_path / "two")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "processes=2" in result.stdout
    two = LayerInfluenceScores.from_pretrained(tmp_path / "two")
    assert two.provenance["num_processes"] == 2

    model = with_lora(tiny_llama(torch.float64), randomize_b=True)
    train, val = random_samples(11, seed=21, prompt_mask=True), random_samples(5, seed=22)
    one = compute_layer_influence(model, train, val, batch_size=2, progress=False, bootstrap_samples=0)
    torch.testing.assert_close(two.influence, one.influence, rtol=1e-5, atol=1e-6 * one.influence.abs().max().item())
    # the validation parts too: samples are assigned to parts in dataset order however the loader is sharded
    assert two.validation_part_weights == one.validation_part_weights
    torch.testing.assert_close(two.validation_part_influence, one.validation_part_influence, rtol=1e-5,
                               atol=1e-6 * one.validation_part_influence.abs().max().item())
    assert not (tmp_path / "two" / "influence_checkpoint").exists()
    through_trainer = LayerInfluenceScores.from_pretrained(str(tmp_path / "two") + "-trainer")
    assert through_trainer.provenance["num_processes"] == 2
    torch.testing.assert_close(through_trainer.influence, one.influence, rtol=1e-5,
                               atol=1e-6 * one.influence.abs().max().item())
    torch.testing.assert_close(through_trainer.validation_part_influence, one.validation_part_influence, rtol=1e-5,
                               atol=1e-6 * one.validation_part_influence.abs().max().item())
