"""push_allocation_to_hub and friends against a Hub-compatible server on 127.0.0.1, with huggingface_hub's
real client in a fresh process (HF_ENDPOINT is read when huggingface_hub is imported)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, STORIES260K, require_shared
from hub_server import start_hub_server

SCRIPT = Path(__file__).parent / "hub_roundtrip_script.py"


@pytest.fixture()
def hub():
    server, state, url = start_hub_server()
    failing, failing_state, failing_url = start_hub_server()
    failing_state.fail_commits = True
    yield state, url, failing_url
    server.shutdown()
    failing.shutdown()


@pytest.mark.slow
def test_push_and_load_allocation_pruned_model_and_adapter(tmp_path, hub):
    require_shared()
    state, url, failing_url = hub
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=url, FAIL_ENDPOINT=failing_url, HF_TOKEN="hf_fake_token_for_tests_123",
               HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1", HF_HUB_DISABLE_TELEMETRY="1")
    c4 = SHARED_DATA / "text" / "c4" / "c4_en_train00000_first1000.jsonl"
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(STORIES260K), str(c4)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULTS "))
    out = json.loads(line[len("RESULTS "):])
    assert out["allocation_equal"] and out["pruned_equal"] and out["moe_equal"]
    assert 0.3 < out["pruned_zeros"] < 0.7
    assert out["allocation_card"]["library_name"] == "hf-layerif" and "layerif" in out["allocation_card"]["tags"]
    assert out["allocation_card"]["has_table"] and out["allocation_card"]["has_sign"]
    assert out["pruned_card"]["library_name"] == "transformers" and "pruned" in out["pruned_card"]["tags"]
    assert "wanda" in out["pruned_card"]["tags"] and out["pruned_card"]["model_index"]
    assert out["moe_card"]["library_name"] == "peft" and "lora-moe" in out["moe_card"]["tags"]
    assert out["moe_card"]["import_note"]
    assert not out["token_written"]
    assert "tester/fails" in out["failure"] and "push_folder_to_hub" in out["failure"] and out["failure_kept"]
    commits = [path for method, path in state.calls if method == "POST" and "/commit/" in path]
    assert len(commits) == 3  # one commit per push
    assert sorted(state.repos) == ["tester/stories-experts", "tester/stories-moe", "tester/stories-wanda"]
    moe_files = set(state.repos["tester/stories-moe"]["files"])
    assert {"adapter_config.json", "adapter_model.safetensors", "layerif_allocation.json", "layerif_allocation.png",
            "README.md"} <= moe_files


def test_missing_card_variable_is_an_error():
    from huggingface_hub import ModelCardData

    from hf_layerif.hub import render_card

    with pytest.raises(ValueError, match="needs a value"):
        render_card("allocation", ModelCardData(library_name="hf-layerif"), repo_id="a/b")
