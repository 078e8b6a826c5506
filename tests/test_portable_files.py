"""Files that leave the machine name a Hub id or ``local:<name>``, never a path of the author's machine."""

import json

import torch
from conftest import tiny_llama

from hf_layerif import compute_layer_influence, sparsity_allocation
from hf_layerif.hub import write_hub_folder
from hf_layerif.pruning import LayerIFPruner, PruningConfig


def _text_files(folder):
    return {p: p.read_text(encoding="utf-8") for p in folder.rglob("*") if p.suffix in (".json", ".md")}


def test_staged_folders_hold_no_local_path(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hf_layerif import LayerIFConfig, expert_allocation

    source = tmp_path / "my-model"
    tiny_llama(layers=4).save_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    data = tmp_path / "calibration.jsonl"
    data.write_text("\n".join(json.dumps({"text": "x"}) for _ in range(3)))
    secret = str(tmp_path)

    scored = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    samples = [{"input_ids": list(range(3, 9))}, {"input_ids": list(range(5, 12))}, {"input_ids": list(range(7, 13))}]
    scores = compute_layer_influence(scored, samples, samples[:1], fit_steps=0, repeats=1, progress=False,
                                     bootstrap_samples=0)
    scored.unload()
    sparsity = sparsity_allocation(scores, 0.5)
    assert sparsity.model["model_id"] == "local:my-model" and len(sparsity.model["fingerprint"]) == 16

    pruner = LayerIFPruner(AutoModelForCausalLM.from_pretrained(source))
    pruner.prune(PruningConfig(method="wanda", sparsity=0.5, allocation=sparsity, calibration=str(data)),
                 torch.randint(3, 50, (4, 12), generator=torch.Generator().manual_seed(0)), progress=False)
    pruner.config.calibration = str(data)
    staged = {"pruned": write_hub_folder(sparsity, tmp_path / "stage-pruned", model=pruner)[0],
              "allocation": write_hub_folder(sparsity, tmp_path / "stage-allocation")[0]}
    experts = expert_allocation(scores, total_experts=8)
    moe = get_peft_model(AutoModelForCausalLM.from_pretrained(source), LayerIFConfig.from_allocation(experts, r=2))
    staged["lora_moe"] = write_hub_folder(experts, tmp_path / "stage-moe", model=moe)[0]
    for kind, folder in staged.items():
        files = _text_files(folder)
        assert files, kind
        for path, text in files.items():
            assert secret not in text, f"{kind}: {path.name} holds a local path"
    config = json.loads((staged["pruned"] / "pruning_config.json").read_text())
    assert config["calibration"] == "local:calibration.jsonl"
    adapter = json.loads((staged["lora_moe"] / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "local:my-model"


def test_every_card_links_the_paper_and_prints_no_unknown_revision(tmp_path):
    from huggingface_hub import ModelCard

    model = tiny_llama(layers=4)
    allocation = sparsity_allocation([1.0, 2.0, 3.0, 4.0], 0.5, model=model)
    pruner = LayerIFPruner(model)
    pruner.prune(PruningConfig(method="magnitude", sparsity=0.5, allocation=allocation), progress=False)
    for name, kwargs in (("allocation", {}), ("pruned", {"model": pruner})):
        folder, _ = write_hub_folder(allocation, tmp_path / name, **kwargs)
        card = ModelCard.load(folder / "README.md")
        assert "arxiv:2505.23811" in card.data.tags
        assert "arXiv:2505.23811" in card.text and "@article{askari2025layerif" in card.text
        assert "revision `None`" not in card.text


def test_a_local_model_card_takes_base_model_and_license_and_says_what_is_missing(tmp_path, caplog):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    import hf_layerif.hub.push as push_module
    from hf_layerif.utils.logging import get_logger

    source = tmp_path / "local-model"
    tiny_llama(layers=4).save_pretrained(source)
    pruner = LayerIFPruner(AutoModelForCausalLM.from_pretrained(source))
    pruner.prune(PruningConfig(method="magnitude", sparsity=0.5), progress=False)
    push_module._WARNED_MISSING.clear()
    logger = get_logger("hf_layerif")
    logger.addHandler(caplog.handler)
    try:
        pruner.save_pretrained(tmp_path / "plain")
        pruner.save_pretrained(tmp_path / "again")
    finally:
        logger.removeHandler(caplog.handler)
    assert caplog.text.count("The model card has no license metadata") == 1  # once per process
    assert "no base_model metadata: pass base_model='owner/name' (--base_model)" in caplog.text
    card = ModelCard.load(tmp_path / "plain" / "README.md")
    assert card.data.base_model is None and "local-model" in card.text and secret_free(card.text, tmp_path)
    pruner.save_pretrained(tmp_path / "named", license="apache-2.0", base_model="owner/base")
    card = ModelCard.load(tmp_path / "named" / "README.md")
    assert card.data.base_model == "owner/base" and card.data.license == "apache-2.0"


def secret_free(text, folder):
    return str(folder) not in text


def test_a_local_model_card_reads_base_model_and_license_from_the_source_folder(tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    source = tmp_path / "fine-tuned"
    tiny_llama(layers=4).save_pretrained(source)
    (source / "README.md").write_text("---\nbase_model: owner/original\nlicense: mit\n---\n# my model\n")
    pruner = LayerIFPruner(AutoModelForCausalLM.from_pretrained(source))
    pruner.prune(PruningConfig(method="magnitude", sparsity=0.5), progress=False)
    pruner.save_pretrained(tmp_path / "out")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "owner/original" and card.data.license == "mit"
    pruner.save_pretrained(tmp_path / "given", license="apache-2.0")  # what the user gives wins
    assert ModelCard.load(tmp_path / "given" / "README.md").data.license == "apache-2.0"
