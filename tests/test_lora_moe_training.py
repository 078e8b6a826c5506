"""Training LayerIF LoRA-MoE adapters with the HF Trainer: accumulation, resume, a real model."""


import pytest
import torch
from conftest import STORIES260K, TINYSTORIES_VAL, require_shared, tiny_llama
from datasets import Dataset
from peft import get_peft_model
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_layerif import LayerIFConfig, LayerIFRouterCallback, LayerInfluenceTrainer
from hf_layerif.data import InfluenceCollator


class SequentialTrainer(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset or self.train_dataset)


class SequentialLayerInfluenceTrainer(LayerInfluenceTrainer):
    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset or self.train_dataset)


class GradientProbe(TrainerCallback):
    """Router-weight gradients accumulated for the first optimizer step."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if "layerif_router" in n}


def _model(seed=0, coef=1.0):
    torch.manual_seed(seed)
    return get_peft_model(tiny_llama(layers=2), LayerIFConfig(experts_per_layer=[3, 4], r=4, lora_dropout=0.0,
                                                             router_aux_loss_coef=coef, task_type="CAUSAL_LM"))


def _args(tmp_path, **kwargs):
    base = dict(output_dir=str(tmp_path), learning_rate=1e-2, report_to=[], use_cpu=True, disable_tqdm=True,
                save_strategy="no", logging_steps=1, max_steps=1, seed=0)
    base.update(kwargs)
    return TrainingArguments(**base)


def _data():
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(3, 50, (8,), generator=gen).tolist() for _ in range(2))
    # micro-batches [a, b] and [a, b]: each has exactly the routing statistics of the full batch
    return Dataset.from_list([{"input_ids": x} for x in (a, b, a, b)])


@pytest.mark.parametrize("trainer_cls,callbacks", [(SequentialTrainer, [LayerIFRouterCallback()]),
                                                   (SequentialLayerInfluenceTrainer, [])])
def test_gradient_accumulation_gives_the_same_router_contribution(tmp_path, trainer_cls, callbacks):
    grads = {}
    for ga, bs in ((1, 4), (2, 2)):
        probe = GradientProbe()
        trainer = trainer_cls(model=_model(), args=_args(tmp_path / f"{ga}", gradient_accumulation_steps=ga,
                                                         per_device_train_batch_size=bs),
                              train_dataset=_data(), data_collator=InfluenceCollator(0), callbacks=[probe, *callbacks])
        trainer.train()
        grads[ga] = probe.grads
    assert grads[1].keys() == grads[2].keys() and grads[1]
    for name in grads[1]:
        torch.testing.assert_close(grads[2][name], grads[1][name], rtol=1e-4, atol=1e-7)


def test_without_the_callback_the_router_loss_is_over_weighted(tmp_path):
    """The failure the callback prevents: a plain Trainer counts the router loss once per micro-batch."""
    grads = {}
    for ga, bs in ((1, 4), (2, 2)):
        probe = GradientProbe()
        trainer = SequentialTrainer(model=_model(coef=10.0), args=_args(tmp_path / f"{ga}", gradient_accumulation_steps=ga,
                                                                       per_device_train_batch_size=bs),
                                    train_dataset=_data(), data_collator=InfluenceCollator(0), callbacks=[probe])
        trainer.train()
        grads[ga] = probe.grads
    name = next(iter(grads[1]))
    assert not torch.allclose(grads[2][name], grads[1][name], rtol=1e-3)


def test_router_statistics_are_logged(tmp_path):
    trainer = SequentialLayerInfluenceTrainer(model=_model(), args=_args(tmp_path, per_device_train_batch_size=2, max_steps=2),
                                              train_dataset=_data(), data_collator=InfluenceCollator(0))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and "router/aux_loss" in logged[0]
    router_keys = {k for k in logged[0] if k.startswith("router/")}
    assert router_keys == {"router/aux_loss", "router/entropy_mean", "router/entropy_min", "router/max_share"}
    assert 0 <= logged[0]["router/entropy_min"] <= logged[0]["router/entropy_mean"] <= 1
    detailed = SequentialLayerInfluenceTrainer(model=_model(), router_log_per_module=True,
                                               args=_args(tmp_path / "d", per_device_train_batch_size=2, max_steps=2),
                                               train_dataset=_data(), data_collator=InfluenceCollator(0))
    detailed.train()
    entry = next(e for e in detailed.state.log_history if "loss" in e)
    assert any(k.endswith("/entropy") for k in entry) and any(k.endswith("/max_share") for k in entry)


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    data = Dataset.from_list([{"input_ids": torch.randint(3, 50, (7,), generator=torch.Generator().manual_seed(i)).tolist()}
                              for i in range(16)])

    def run(output, resume=None, max_steps=4):
        trainer = LayerInfluenceTrainer(model=_model(), args=_args(output, per_device_train_batch_size=2, max_steps=max_steps,
                                                                   save_strategy="steps", save_steps=2),
                                        train_dataset=data, data_collator=InfluenceCollator(0))
        trainer.train(resume_from_checkpoint=resume)
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "layerif_" in n}

    full = run(tmp_path / "full")
    run(tmp_path / "part", max_steps=4)  # writes checkpoint-2 and checkpoint-4
    resumed = run(tmp_path / "part", resume=str(tmp_path / "part" / "checkpoint-2"))
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_stories260k_finetune_loss_goes_down_and_routing_is_not_collapsed(tmp_path):
    require_shared()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(STORIES260K)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(STORIES260K),
                           LayerIFConfig(experts_per_layer=[2, 3, 4, 3, 2], r=8, lora_alpha=16, top_k=2,
                                         lora_dropout=0.0, task_type="CAUSAL_LM"))
    text = TINYSTORIES_VAL.read_text(encoding="utf-8", errors="replace")
    paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 80][:64]
    data = Dataset.from_list([{"input_ids": tokenizer(p)["input_ids"][:96]} for p in paragraphs])
    trainer = LayerInfluenceTrainer(model=model, args=_args(tmp_path, per_device_train_batch_size=8, max_steps=16,
                                                            learning_rate=3e-3, logging_steps=4),
                                    train_dataset=data, data_collator=InfluenceCollator(tokenizer.pad_token_id or 0))
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]
    shares = [v for e in trainer.state.log_history for k, v in e.items() if k.endswith("max_share")]
    assert shares and max(shares) < 0.95  # no module sends (almost) every token to one expert


def test_reentrant_checkpointing_warns_that_the_router_loss_gets_no_gradient():
    from unittest import mock

    import hf_layerif.tuners.model as tuner_module

    model = _model()
    model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    ids = torch.randint(3, 50, (2, 6))
    with mock.patch.object(tuner_module.logger, "warning") as warning:
        model(input_ids=ids, labels=ids)
    assert any("use_reentrant" in str(call) for call in warning.call_args_list)


def test_unload_removes_the_tuner_hooks_so_the_base_trains_a_new_adapter():
    """A trained LoRA-MoE unloaded from its base leaves no hook behind: the base's loss is the dense loss again
    (no stale router loss), and a second adapter on the same base trains (the stale hook used to add the first
    tuner's router loss, whose graph was already freed, to every later loss)."""
    base = tiny_llama(layers=2)
    ids = torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    base.train()
    with torch.no_grad():
        dense = base(input_ids=ids, labels=ids).loss
    first = get_peft_model(base, LayerIFConfig(experts_per_layer=[2, 3], task_type="CAUSAL_LM"))
    first.train()
    first(input_ids=ids, labels=ids).loss.backward()
    plain = first.unload()
    assert not plain._forward_hooks and not plain._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids, labels=ids).loss, dense)
    second = get_peft_model(plain, LayerIFConfig(experts_per_layer=[3, 2], task_type="CAUSAL_LM"))
    second.train()
    loss = second(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for n, p in second.named_parameters() if "layerif_A" in n)


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", None])
def test_the_router_loss_is_an_output_field_beside_the_task_loss(task_type):
    """Training with labels: loss = task loss + router loss, with the router part in ``outputs.router_loss``. A
    task-typed PeftModel gets it from the tuner's forward (no hook on the wrapped model); one without a task type
    calls the transformers model past the tuner and gets the same through the fallback hook."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(layers=2), LayerIFConfig(experts_per_layer=[3, 4], r=4, lora_dropout=0.0,
                                                              router_aux_loss_coef=0.5, task_type=task_type))
    tuner = model.base_model
    assert (tuner._router_loss_hook is None) == (task_type is not None)
    ids = torch.randint(3, 50, (2, 8))
    model.train()
    out = model(input_ids=ids, labels=ids)
    tuner.add_router_loss = False
    task = model(input_ids=ids, labels=ids)
    tuner.add_router_loss = True
    assert "router_loss" not in task and out.router_loss > 0
    torch.testing.assert_close(out.loss, task.loss + out.router_loss)
    torch.testing.assert_close(out.router_loss, tuner.router_loss())
    model.eval()
    assert "router_loss" not in model(input_ids=ids, labels=ids)  # evaluation reports the task loss alone
