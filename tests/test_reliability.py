"""Silent wrong results, lost work and unclear errors: each test reproduces one defect class and its fix."""

import json
import os
import stat

import pytest
import torch
from conftest import SHARED_DATA, STORIES260K, random_samples, require_shared, tiny_llama, with_lora

from hf_layerif import compute_layer_influence
from hf_layerif.influence.capture import PerSampleGradientCapture

OPTIONS = dict(batch_size=2, checkpoint_every=1, progress=False, bootstrap_samples=0)


def _crash_on_call(monkeypatch, n: int) -> None:
    original = PerSampleGradientCapture.compute
    calls = {"n": 0}

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("simulated crash")
        return original(self, batch)

    monkeypatch.setattr(PerSampleGradientCapture, "compute", failing)


# --- resume -------------------------------------------------------------------------------------------------
def test_resume_refuses_a_checkpoint_of_another_adapter_draw(tmp_path, monkeypatch):
    train, val = random_samples(8, seed=1), random_samples(2, seed=2)
    _crash_on_call(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compute_layer_influence(with_lora(tiny_llama(), seed=1, randomize_b=True), train, val, output_dir=tmp_path, **OPTIONS)
    monkeypatch.undo()
    other_draw = with_lora(tiny_llama(), seed=2, randomize_b=True)  # what --lora_seed 1 does
    with pytest.raises(ValueError, match=r"different influence run.*weights\.tracked"):
        compute_layer_influence(other_draw, train, val, output_dir=tmp_path, **OPTIONS)
    with pytest.raises(ValueError, match=r"differs in: .*arguments\.damping_factor"):
        compute_layer_influence(with_lora(tiny_llama(), seed=1, randomize_b=True), train, val, output_dir=tmp_path,
                                damping_factor=0.5, **OPTIONS)


def test_resume_says_where_it_resumes(tmp_path, monkeypatch, caplog):
    from hf_layerif.utils.logging import get_logger

    train, val = random_samples(8, seed=1), random_samples(2, seed=2)
    model = with_lora(tiny_llama(), seed=1, randomize_b=True)
    _crash_on_call(monkeypatch, 4)  # validation, training steps 1 and 2, crash in step 3
    with pytest.raises(RuntimeError):
        compute_layer_influence(model, train, val, output_dir=tmp_path, **OPTIONS)
    monkeypatch.undo()
    logger = get_logger("hf_layerif")
    logger.addHandler(caplog.handler)
    try:
        compute_layer_influence(model, train, val, output_dir=tmp_path, **OPTIONS)
        assert "from step 2 of 4" in caplog.text
        compute_layer_influence(model, train, val, output_dir=tmp_path, **OPTIONS)
        assert "Loaded the finished scores" in caplog.text  # an identical call reuses them
        compute_layer_influence(model, train, val, output_dir=tmp_path, overwrite=True, **OPTIONS)
        assert "holds finished scores; they will be replaced" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    from hf_layerif.utils.locking import FolderLockedError, folder_lock

    model = with_lora(tiny_llama(), randomize_b=True)
    with folder_lock(tmp_path, ".hf-layerif-rank0.lock"):  # another run holds the folder (a separate descriptor)
        with pytest.raises(FolderLockedError, match="in use by another hf-layerif run"):
            compute_layer_influence(model, random_samples(4), random_samples(2), output_dir=tmp_path, **OPTIONS)
    compute_layer_influence(model, random_samples(4), random_samples(2), output_dir=tmp_path, **OPTIONS)  # released


# --- weights and lengths ------------------------------------------------------------------------------------
def test_nan_weight_is_named_before_pruning():
    from hf_layerif.pruning import LayerIFPruner, PruningConfig

    model = tiny_llama(layers=2)
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight[0, 3] = float("nan")
    with pytest.raises(FloatingPointError, match=r"model\.layers\.1\.self_attn\.v_proj\.weight \(1 of"):
        LayerIFPruner(model).prune(PruningConfig(method="wanda", sparsity=0.5), torch.randint(3, 50, (2, 8)), progress=False)
    with pytest.raises(FloatingPointError, match="v_proj"):
        LayerIFPruner(model).prune(PruningConfig(method="magnitude", sparsity=0.5), progress=False)


def test_samples_longer_than_a_gpt2_context_are_truncated_with_a_warning(caplog):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_layerif.utils.logging import get_logger

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)).eval()
    model = get_peft_model(gpt2, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    train = random_samples(3, min_len=4, max_len=6) + [{"input_ids": list(range(3, 43))}]  # 40 tokens > 16
    logger = get_logger("hf_layerif")
    logger.addHandler(caplog.handler)
    try:
        scores = compute_layer_influence(model, train, random_samples(2), progress=False, bootstrap_samples=0)
    finally:
        logger.removeHandler(caplog.handler)
    assert "1 of 4 samples of train_dataset are longer than 16 tokens" in caplog.text
    assert torch.isfinite(scores.influence).all() and scores.influence.shape == (2, 4)


def test_calibration_longer_than_the_context_is_refused_or_capped(caplog):
    from hf_layerif.models.checks import check_sequence_length
    from hf_layerif.pruning import LayerIFPruner, PruningConfig
    from hf_layerif.utils.logging import get_logger

    model = tiny_llama(layers=2)  # 64 positions
    with pytest.raises(ValueError, match="exceed the model's context of 64"):  # given token ids are never cut
        LayerIFPruner(model).prune(PruningConfig(method="wanda", sparsity=0.5), torch.zeros(2, 128, dtype=torch.long),
                                   progress=False)
    logger = get_logger("hf_layerif")
    logger.addHandler(caplog.handler)
    try:
        assert check_sequence_length(2048, model, "--seqlen") == 64
        # from text, prune caps seqlen the same way (then needs a tokenizer to read the text)
        with pytest.raises(ValueError, match="needs a tokenizer"):
            LayerIFPruner(model).prune(PruningConfig(method="wanda", sparsity=0.5, seqlen=128), ["text"], progress=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert "--seqlen=2048 is longer than the model's context (64 positions)" in caplog.text
    assert "seqlen=128 is longer than the model's context (64 positions); using 64 tokens" in caplog.text


# --- lost or leaked work ------------------------------------------------------------------------------------
def test_prune_saves_the_model_before_an_evaluation_that_fails(tmp_path, monkeypatch, capsys):
    require_shared()
    import datasets

    from hf_layerif.cli.main import main

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'google/boolq' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    c4 = SHARED_DATA / "text" / "c4" / "c4_en_train00000_first1000.jsonl"
    code = main(["prune", "--model", str(STORIES260K), "--method", "magnitude", "--sparsity", "0.5",
                 "--calibration", str(c4), "--output", str(tmp_path), "--eval", "boolq", "--device", "cpu",
                 "--allocation", "uniform"])
    assert code == 1
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "pruning_report.json").exists()
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert "--task_files boolq=" in results["errors"]["boolq"]
    assert results["pruning"]["achieved"] == pytest.approx(0.5, abs=1e-6)
    assert "The pruned model is saved" in capsys.readouterr().out


class _RecordingApi:
    def __init__(self):
        self.commits = []

    def create_repo(self, repo_id, **kwargs):
        return repo_id

    def create_commit(self, repo_id, operations, **kwargs):
        self.commits.append(sorted(op.path_in_repo for op in operations))
        return "commit"


def _moe_and_allocations():
    from peft import get_peft_model

    from hf_layerif import LayerIFConfig
    from hf_layerif.allocation import expert_allocation, sparsity_allocation

    base = tiny_llama(layers=2)
    experts = expert_allocation(None, 4, model=base, method="uniform")
    sparsity = sparsity_allocation(None, 0.5, model=base, method="uniform")
    moe = get_peft_model(base, LayerIFConfig(experts_per_layer=experts.values, task_type="CAUSAL_LM"))
    return moe, experts, sparsity


def test_each_push_uploads_only_what_it_staged(tmp_path):
    from hf_layerif.hub import push_allocation_to_hub

    moe, experts, sparsity = _moe_and_allocations()
    api = _RecordingApi()
    local = tmp_path / "staging"
    push_allocation_to_hub(experts, "me/repo", model=moe, api=api, local_dir=local)
    assert "adapter_model.safetensors" in api.commits[0]
    push_allocation_to_hub(sparsity, "me/repo", api=api, local_dir=local)
    assert not any(name.startswith("adapter_") for name in api.commits[1]), api.commits[1]
    assert set(api.commits[1]) == {"README.md", "layerif_allocation.json", "layerif_allocation.png"}
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and was not staged by hf-layerif"):
        push_allocation_to_hub(sparsity, "me/repo", api=api, local_dir=mine)
    assert (mine / "notes.txt").exists()


def test_pruner_save_writes_the_model_once(tmp_path, monkeypatch):
    from hf_layerif.pruning import LayerIFPruner, PruningConfig

    pruner = LayerIFPruner(tiny_llama(layers=2))
    pruner.prune(PruningConfig(method="magnitude", sparsity=0.5), progress=False)
    calls = []
    original = type(pruner.model).save_pretrained

    def counting(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pruner.model), "save_pretrained", counting)
    pruner.save_pretrained(tmp_path / "saved")
    assert len(calls) == 1
    pruner.push_to_hub("me/pruned", api=_RecordingApi(), local_dir=tmp_path / "push")
    assert len(calls) == 2


def test_outputs_are_readable_by_others_under_a_022_umask(tmp_path):
    from hf_layerif.pruning import LayerIFPruner, PruningConfig

    old = os.umask(0o022)
    try:
        model = with_lora(tiny_llama(layers=2), randomize_b=True)
        compute_layer_influence(model, random_samples(4), random_samples(2), output_dir=tmp_path / "scores", **OPTIONS)
        from hf_layerif.hub import write_hub_folder

        moe, experts, _ = _moe_and_allocations()
        experts.save_pretrained(tmp_path / "allocation")
        write_hub_folder(experts, tmp_path / "adapter", model=moe)  # PEFT's save through safetensors (0600) inside
        pruner = LayerIFPruner(tiny_llama(layers=2))
        pruner.prune(PruningConfig(method="magnitude", sparsity=0.5), progress=False)
        pruner.save_pretrained(tmp_path / "pruned")
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(files) > 10
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert all(mode == 0o644 for mode in modes.values()), modes


# --- clear errors -------------------------------------------------------------------------------------------
def test_push_allocation_to_hub_names_what_to_pass():
    from hf_layerif.allocation import Allocation
    from hf_layerif.hub import push_allocation_to_hub

    with pytest.raises(TypeError, match=r"Allocation\.from_values"):
        push_allocation_to_hub([1, 2, 3], "me/repo", api=_RecordingApi())
    model = tiny_llama(layers=3)
    allocation = Allocation.from_values([1, 2, 3], "experts", model)
    assert allocation.values == [1, 2, 3] and allocation.model["num_blocks"] == 3
    with pytest.raises(ValueError, match="3 Transformer blocks"):
        Allocation.from_values([0.5, 0.5], "sparsity", model)


def test_missing_local_paths_and_offline_defaults_say_what_to_do(monkeypatch, tmp_path):
    import datasets

    from hf_layerif.calibration import get_calibration_data
    from hf_layerif.data.loading import load_any_dataset

    with pytest.raises(FileNotFoundError, match="nonexistent.jsonl: no such file"):
        load_any_dataset("nonexistent.jsonl")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/c4' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="Offline, use local files instead: --calibration"):
        get_calibration_data(None, "c4", 2, 8)
    with pytest.raises(FileNotFoundError, match="c4.jsonl: no such file"):  # one loader, one message
        get_calibration_data(None, str(tmp_path / "c4.jsonl"), 2, 8)
    from hf_layerif.evaluation.perplexity import load_wikitext2_test

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_wikitext2_test(str(tmp_path / "test.jsonl"))
    with pytest.raises(ConnectionError, match="Offline, use local files instead: --wikitext2"):
        load_wikitext2_test()


def test_compare_allocations_refuses_mixed_kinds():
    from hf_layerif.allocation import compare_allocations

    _, experts, sparsity = _moe_and_allocations()
    with pytest.raises(ValueError, match="one kind"):
        compare_allocations(experts, sparsity)


def test_allocate_help_and_per_kind_options(capsys):
    from hf_layerif.cli.main import main

    assert main(["allocate", "--help"]) == 0
    assert "experts" in capsys.readouterr().out
    helps = {}
    for kind in ("experts", "sparsity"):
        with pytest.raises(SystemExit) as done:
            main(["allocate", kind, "--help"])
        assert done.value.code == 0
        helps[kind] = capsys.readouterr().out
    assert "--total" in helps["experts"] and "--total" not in helps["sparsity"]
    assert "--owl_lambda" in helps["sparsity"] and "--owl_lambda" not in helps["experts"]
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    assert "blank lines separate samples" in " ".join(capsys.readouterr().out.split())


def test_glue_tsv_loads_with_bare_quotes_and_bom():
    require_shared()
    from hf_layerif.data.loading import load_any_dataset

    mrpc = load_any_dataset(str(SHARED_DATA / "tasks" / "glue" / "MRPC" / "train.tsv"))
    assert len(mrpc) == 3668
    assert mrpc.column_names[0] == "Quality" and "#1 String" in mrpc.column_names
    rte = load_any_dataset(str(SHARED_DATA / "tasks" / "glue" / "RTE" / "dev.tsv"))
    assert len(rte) == 277


def test_model_loaded_by_path_keeps_its_stories260k_limits():
    require_shared()
    from transformers import AutoModelForCausalLM

    from hf_layerif.models.checks import model_max_length

    assert model_max_length(AutoModelForCausalLM.from_pretrained(STORIES260K)) == 512


def test_public_names_users_reach_for_first_import_from_the_package():
    import hf_layerif
    from hf_layerif import (  # noqa: F401
        LayerIFConfig,
        LayerIFPruner,
        LayerInfluenceTrainer,
        PruningConfig,
        expert_allocation,
        load_allocation,
        push_allocation_to_hub,
        sparsity_allocation,
    )

    assert set(hf_layerif.__all__) >= {"push_allocation_to_hub", "LayerIFPruner", "load_allocation"}
    from hf_layerif.version import __version__

    assert hf_layerif.__version__ == __version__


def test_non_finite_gradients_are_named_once_per_pass(monkeypatch):
    original = PerSampleGradientCapture.compute
    calls = {"n": 0}

    def poisoned(self, batch):
        grads, losses = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:  # validation batch, then the 2nd training batch: its second sample overflows
            grads[1][1, 0] = float("inf")
        return grads, losses

    monkeypatch.setattr(PerSampleGradientCapture, "compute", poisoned)
    with pytest.raises(FloatingPointError, match=r"training samples \[3\]"):
        compute_layer_influence(with_lora(tiny_llama(), randomize_b=True), random_samples(6), random_samples(2),
                                batch_size=2, progress=False, bootstrap_samples=0)


def test_cards_of_every_kind_name_the_hub_base_model_and_no_local_path(tmp_path):
    from huggingface_hub import ModelCard

    from hf_layerif.hub import write_hub_folder
    from hf_layerif.pruning import LayerIFPruner, PruningConfig

    moe, experts, sparsity = _moe_and_allocations()
    for allocation in (experts, sparsity):
        allocation.model["model_id"] = "org/base-model"  # as for a model loaded by Hub id
    pruner = LayerIFPruner(tiny_llama(layers=2))
    pruner.model.config._name_or_path = "org/base-model"
    pruner.prune(PruningConfig(method="magnitude", sparsity=0.5), progress=False)
    staged = {
        "allocation": write_hub_folder(experts, tmp_path / "a", repo_id="me/alloc", license="apache-2.0")[0],
        "lora_moe": write_hub_folder(experts, tmp_path / "m", model=moe, license="apache-2.0",
                                     eval_results={"arc_easy": {"acc_norm": 0.5}})[0],
        "pruned": write_hub_folder(pruner.card_allocation(), tmp_path / "p", model=pruner, repo_id="me/pruned",
                                   license="apache-2.0", eval_results={"wikitext2_ppl": 12.5})[0],
    }
    for kind, folder in staged.items():
        text = (folder / "README.md").read_text()
        card = ModelCard(text)  # huggingface_hub's own parsing of the metadata block
        data = card.data.to_dict()
        assert data["base_model"] == "org/base-model" and data["license"] == "apache-2.0", kind
        assert "2505.23811" in text and "Askari" in text, kind
        assert "your-name" not in text and str(tmp_path) not in text, kind
        assert "github.com/hf-layerif" not in text, kind
    assert ModelCard((staged["lora_moe"] / "README.md").read_text()).data.to_dict()["base_model_relation"] == "adapter"
    assert './m"' in (staged["lora_moe"] / "README.md").read_text()  # staged only: a relative path
    pruned = ModelCard((staged["pruned"] / "README.md").read_text()).data
    assert pruned.eval_results and pruned.eval_results[0].metric_value == 12.5
    # the pipeline tag follows what is pushed: none for an allocation alone, the adapter's task, the model class
    tags = {kind: ModelCard((folder / "README.md").read_text()).data.to_dict().get("pipeline_tag")
            for kind, folder in staged.items()}
    assert tags == {"allocation": None, "lora_moe": "text-generation", "pruned": "text-generation"}


def test_card_datasets_come_from_the_scored_data_and_the_calibration(tmp_path):
    import datasets
    from huggingface_hub import ModelCard

    from hf_layerif import compute_layer_influence
    from hf_layerif.allocation import sparsity_allocation
    from hf_layerif.data.loading import hub_dataset_id
    from hf_layerif.hub import write_hub_folder
    from hf_layerif.hub.push import _datasets

    # a Hub-loaded Dataset names its repo in its download URLs; a local one does not
    hub_like = datasets.Dataset.from_dict({"text": ["a"]}, info=datasets.DatasetInfo(download_checksums={
        "hf://datasets/roneneldan/TinyStories@f54c09fd/data/validation.parquet": {"num_bytes": 1}}))
    assert hub_dataset_id(hub_like) == "roneneldan/TinyStories"
    assert hub_dataset_id(datasets.Dataset.from_dict({"text": ["a"]})) is None and hub_dataset_id(["a"]) is None

    model = with_lora(tiny_llama(layers=4), randomize_b=True)
    scores = compute_layer_influence(model, random_samples(4), random_samples(2, seed=1), progress=False,
                                     bootstrap_samples=0, dataset_names={"train": "org/train-set"})
    assert scores.provenance["data"]["train_name"] == "org/train-set"
    assert "validation_name" not in scores.provenance["data"]
    allocation = sparsity_allocation(scores, 0.5)
    card = ModelCard((write_hub_folder(allocation, tmp_path / "a")[0] / "README.md").read_text())
    assert card.data.to_dict()["datasets"] == ["org/train-set"]
    assert _datasets(allocation, "c4") == ["org/train-set", "allenai/c4"]
    assert _datasets(allocation, "data/c4.jsonl") == ["org/train-set"]  # a local file
    assert _datasets(allocation, "token ids given to prune()") == ["org/train-set"]


def test_package_logging_follows_transformers_verbosity(capsys):
    from transformers.utils import logging as hf_logging

    from hf_layerif.utils.logging import get_logger

    logger = get_logger("hf_layerif.influence.engine")
    before = hf_logging.get_verbosity()
    try:
        hf_logging.set_verbosity_warning()
        logger.info("quiet message")
        hf_logging.set_verbosity_info()
        logger.info("loud message")
    finally:
        hf_logging.set_verbosity(before)
    err = capsys.readouterr().err
    assert "loud message" in err and "quiet message" not in err


def test_owl_allocation_records_the_threshold_it_used():
    from hf_layerif.pruning import LayerIFPruner, PruningConfig

    pruner = LayerIFPruner(tiny_llama(layers=3))
    pruner.prune(PruningConfig(method="wanda", sparsity=0.5, allocation="owl", owl_m=3.0),
                 torch.randint(3, 50, (4, 12), generator=torch.Generator().manual_seed(0)), progress=False)
    assert pruner.allocation.hyperparameters["owl_m"] == 3.0


def test_estimators_come_from_one_registry():
    from hf_layerif.influence.arguments import InfluenceArguments
    from hf_layerif.influence.estimators import ESTIMATORS, get_estimator

    assert set(ESTIMATORS) == {"datainf", "exact", "lissa", "tracin"}
    assert {n for n, cls in ESTIMATORS.items() if cls.streaming} == {"datainf", "tracin"}
    assert get_estimator(InfluenceArguments(estimator="lissa", lissa_depth=7)).depth == 7
    with pytest.raises(ValueError, match=r"choose one of \("):
        InfluenceArguments(estimator="ekfac")


def test_aggregations_come_from_one_registry():
    from hf_layerif.influence.arguments import InfluenceArguments
    from hf_layerif.influence.scores import AGGREGATIONS, aggregate_block_scores, register_aggregation

    assert set(AGGREGATIONS) == {"positive", "all", "top_fraction", "harmful"}
    influence = torch.tensor([[-2.0, 1.0, -1.0], [0.5, 0.5, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(aggregate_block_scores(influence, "positive"), torch.tensor([3.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(aggregate_block_scores(influence, "top_fraction", 0.34),
                               torch.tensor([3.0, 2.5], dtype=torch.float64))  # the ⌈0.34·3⌉ = 2 most negative

    @register_aggregation("test_max_abs")
    def max_abs(values, fraction):
        return values.abs().max(-1).values

    try:
        assert InfluenceArguments(aggregation="test_max_abs").aggregation == "test_max_abs"
        torch.testing.assert_close(aggregate_block_scores(influence, "test_max_abs"),
                                   torch.tensor([2.0, 3.0], dtype=torch.float64))
    finally:
        del AGGREGATIONS["test_max_abs"]
    with pytest.raises(ValueError, match="aggregation"):
        InfluenceArguments(aggregation="test_max_abs")


def test_card_names_the_calibration_actually_used(tmp_path):
    from hf_layerif.pruning import LayerIFPruner, PruningConfig

    pruner = LayerIFPruner(tiny_llama(layers=2))
    pruner.prune(PruningConfig(method="wanda", sparsity=0.5), torch.randint(3, 50, (4, 12)), progress=False)
    pruner.save_pretrained(tmp_path / "given")
    card = (tmp_path / "given" / "README.md").read_text()
    assert "4 sequences × 12 tokens from token ids given to prune()" in card and "from c4" not in card
    pruner = LayerIFPruner(tiny_llama(layers=2))
    pruner.prune(PruningConfig(method="magnitude", sparsity=0.5), progress=False)
    pruner.save_pretrained(tmp_path / "magnitude")
    assert "none (magnitude pruning uses no calibration data)" in (tmp_path / "magnitude" / "README.md").read_text()


def test_allocation_card_states_the_scoring_protocol_and_its_stability(tmp_path):
    from hf_layerif import expert_allocation
    from hf_layerif.hub import write_hub_folder

    model = with_lora(tiny_llama())
    scores = compute_layer_influence(model, random_samples(12), random_samples(3), fit_steps=3, fit_learning_rate=1e-2,
                                     bootstrap_samples=20, progress=False)
    allocation = expert_allocation(scores, 6)
    assert allocation.provenance["scores"]["protocol"]["draws"] == 3
    write_hub_folder(allocation, tmp_path / "card")
    card = (tmp_path / "card" / "README.md").read_text()
    assert "a LoRA adapter fitted 3 steps to the training samples, averaged over 3 draws" in card
    assert "mean pairwise Spearman between draws" in card and "5th-percentile bootstrap Spearman" in card


def test_missing_model_folder_and_empty_data_fail_in_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import transformers

    from hf_layerif.cli.main import main

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    data = tmp_path / "one.jsonl"
    data.write_text('{"text": "hello world"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    missing = str(tmp_path / "no-such-model")
    assert main(["score", "--model", missing, "--train", str(data), "--validation", str(data)]) == 2
    assert f"--model {missing}: no such folder" in capsys.readouterr().err
    assert main(["prune", "--model", "./no-such-model", "--output", str(tmp_path / "out")]) == 2
    assert "--model ./no-such-model: no such folder (a local path, so the Hub was not asked)" in capsys.readouterr().err
    folder = tmp_path / "model"
    folder.mkdir()
    assert main(["score", "--model", str(folder), "--train", str(empty), "--validation", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{empty} is empty: it holds no samples" in err and len(err.strip().splitlines()) == 1


def test_finished_runs_leave_no_lock_and_default_staging_leaves_nothing_behind(tmp_path, monkeypatch):
    from conftest import random_samples, with_lora

    from hf_layerif import compute_layer_influence
    from hf_layerif.hub import push_allocation_to_hub, write_hub_folder

    out = tmp_path / "scores"
    compute_layer_influence(with_lora(tiny_llama(layers=2)), random_samples(4), random_samples(2, seed=1),
                            output_dir=out, fit_steps=0, repeats=1, progress=False, bootstrap_samples=0)
    assert not list(out.glob("*.lock")) and (out / "layerif_scores.json").exists()

    monkeypatch.chdir(tmp_path)
    moe, experts, sparsity = _moe_and_allocations()
    staged = []
    import hf_layerif.hub.push as push_module

    real = push_module._default_local_dir
    monkeypatch.setattr(push_module, "_default_local_dir", lambda repo: staged.append(real(repo)) or staged[-1])
    push_allocation_to_hub(experts, "me/repo", model=moe, api=_RecordingApi())
    assert staged and not staged[0].exists()  # a successful upload removes its temporary staging folder
    assert not list(tmp_path.glob("hub-upload-*"))
    # a folder never mixes two artifacts silently
    folder = tmp_path / "stage"
    write_hub_folder(experts, folder, model=moe, clean=True)
    with pytest.raises(ValueError, match="clean=True"):
        write_hub_folder(sparsity, folder)
    write_hub_folder(sparsity, folder, clean=True)
    assert not (folder / "adapter_config.json").exists()


def test_the_first_failed_connection_switches_the_process_offline(monkeypatch):
    import datasets
    import huggingface_hub.constants

    from hf_layerif.data.loading import load_hub_dataset
    from hf_layerif.utils import offline

    monkeypatch.setattr(offline, "_state", {"offline": False})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def unreachable(*args, **kwargs):
        calls.append(datasets.config.HF_HUB_OFFLINE)
        raise ConnectionError("Couldn't reach 'allenai/c4' on the Hub (ConnectTimeout)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(ConnectionError, match="Offline, use local files instead: --calibration"):
        load_hub_dataset("allenai/c4", local_option="--calibration path/to/c4.jsonl")
    assert offline.is_offline() and huggingface_hub.constants.is_offline_mode()
    with pytest.raises(ConnectionError):
        load_hub_dataset("wikitext", "wikitext-2-raw-v1", local_option="--wikitext2 path")
    assert calls == [False, True]  # the second access ran in datasets' offline mode (cache only, no waiting)
    # a missing repo is not a connection failure
    assert not offline.is_connection_error(ValueError("Repository not found"))


def test_log_records_go_through_tqdm_write(monkeypatch):
    """A record logged while a progress bar runs is written above the bar (tqdm.write), not into it."""
    import tqdm

    from hf_layerif.utils.logging import get_logger

    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, file=None, **kw: written.append(s)))
    get_logger("hf_layerif.test").warning("a message during a bar")
    assert written == ["[WARNING|hf_layerif.test] a message during a bar"]
