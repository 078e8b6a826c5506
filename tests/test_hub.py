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


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    """One run of the round-trip script against two local Hub servers (one accepts, one fails every commit):
    its results, the accepting server's state, and the script's output for failure messages."""
    require_shared()
    tmp_path = tmp_path_factory.mktemp("hub")
    server, state, url = start_hub_server()
    failing, failing_state, failing_url = start_hub_server()
    failing_state.fail_commits = True
    try:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(HF_ENDPOINT=url, FAIL_ENDPOINT=failing_url, HF_TOKEN="hf_fake_token_for_tests_123",
                   HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1", HF_HUB_DISABLE_TELEMETRY="1")
        c4 = SHARED_DATA / "text" / "c4" / "c4_en_train00000_first1000.jsonl"
        result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(STORIES260K), str(c4)], env=env,
                                capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
        failing.shutdown()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):]), state


@pytest.mark.slow
def test_each_artefact_loads_back_exactly(roundtrip):
    out, _ = roundtrip
    assert out["allocation_equal"], "load_allocation gave another allocation"
    assert out["pruned_equal"], "the pruned model loaded from the Hub differs"
    assert out["moe_equal"], "the LoRA-MoE adapter loaded from the Hub differs"
    assert 0.3 < out["pruned_zeros"] < 0.7


@pytest.mark.slow
def test_allocation_card_metadata(roundtrip):
    card = roundtrip[0]["allocation_card"]
    assert card["library_name"] == "hf-layerif" and "layerif" in card["tags"]
    assert card["has_table"] and card["has_sign"]


@pytest.mark.slow
def test_pruned_model_card_metadata(roundtrip):
    card = roundtrip[0]["pruned_card"]
    assert card["library_name"] == "transformers" and "pruned" in card["tags"] and "wanda" in card["tags"]
    assert card["model_index"]


@pytest.mark.slow
def test_lora_moe_card_metadata(roundtrip):
    card = roundtrip[0]["moe_card"]
    assert card["library_name"] == "peft" and "lora-moe" in card["tags"] and card["import_note"]


@pytest.mark.slow
def test_no_token_is_written(roundtrip):
    assert not roundtrip[0]["token_written"]


@pytest.mark.slow
def test_a_failed_push_keeps_the_files_and_names_the_retry(roundtrip):
    out = roundtrip[0]
    assert "tester/fails" in out["failure"] and "push_folder_to_hub" in out["failure"] and out["failure_kept"]


@pytest.mark.slow
def test_one_commit_per_push_with_every_file(roundtrip):
    state = roundtrip[1]
    commits = [path for method, path in state.calls if method == "POST" and "/commit/" in path]
    assert len(commits) == 3
    assert sorted(state.repos) == ["tester/stories-experts", "tester/stories-moe", "tester/stories-wanda"]
    moe_files = set(state.repos["tester/stories-moe"]["files"])
    assert {"adapter_config.json", "adapter_model.safetensors", "layerif_allocation.json", "layerif_allocation.png",
            "README.md"} <= moe_files


def test_missing_card_variable_is_an_error():
    from huggingface_hub import ModelCardData

    from hf_layerif.hub import render_card

    with pytest.raises(ValueError, match="needs a value"):
        render_card("allocation", ModelCardData(library_name="hf-layerif"), repo_id="a/b")


def test_a_new_artifact_is_one_class_and_a_registration(tmp_path, monkeypatch):
    """write_hub_folder stages and renders through the artifact protocol alone: an artifact defined here (a JSON
    note beside a sparsity allocation) gets its files, its card and its commit suffix with no change to the hub."""
    from huggingface_hub import ModelCard, ModelCardData

    from hf_layerif.allocation import Allocation
    from hf_layerif.hub import artifacts, render_card, write_hub_folder
    from hf_layerif.utils.io import write_json

    class NoteArtifact(artifacts.HubArtifact):
        kind = "note"
        allocation_kind = "sparsity"
        files = ("note.json",)
        commit_suffix = " and a note"

        @classmethod
        def matches(cls, model):
            return isinstance(model, dict) and "note" in model

        def stage(self, local):
            write_json(local / "note.json", self.model)
            self.info = {"note": self.model["note"]}

        def card(self, allocation, metadata, common, model_name, eval_entries, eval_rows):
            card_data = ModelCardData(**metadata, library_name="hf-layerif", tags=["layerif", "note"])
            return render_card("allocation", card_data, kind_title="Note", method=allocation.method,
                               hyperparameters_text=self.info["note"], value_header="sparsity", summary="",
                               usage="", architecture=None, num_blocks=allocation.num_blocks, revision=None,
                               scores_text="-", created=allocation.created, **common)

    monkeypatch.setattr(artifacts, "ARTIFACTS", (*artifacts.ARTIFACTS, NoteArtifact))
    monkeypatch.setattr("hf_layerif.hub.push.ARTIFACTS", artifacts.ARTIFACTS)
    from conftest import tiny_llama

    model = tiny_llama(layers=2)
    sparsity = Allocation.from_values([0.4, 0.6], "sparsity", model)
    folder, kind = write_hub_folder(sparsity, tmp_path / "staged", model={"note": "kept 2 blocks"})
    assert kind == "note" and (folder / "note.json").exists() and (folder / "layerif_allocation.json").exists()
    card = ModelCard((folder / "README.md").read_text())
    assert "kept 2 blocks" in card.text and "note" in card.data.to_dict()["tags"]
    experts = Allocation.from_values([2, 4], "experts", model)
    with pytest.raises(ValueError, match="goes with a sparsity allocation"):
        write_hub_folder(experts, tmp_path / "other", model={"note": "x"})
    with pytest.raises(ValueError, match="already holds a staged note"):  # a folder never mixes two artifacts
        write_hub_folder(sparsity, folder)
