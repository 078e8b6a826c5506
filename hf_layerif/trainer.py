"""``LayerInfluenceTrainer``: a ``transformers.Trainer`` that computes LayerIF scores with its own set-up.

The scores use the Trainer's accelerator (processes, device), its data collator and evaluation dataloaders
(sequential, sharded per process; per-sample gradients are gathered back in dataset order with
``gather_for_metrics``), and its mixed-precision context. Call :meth:`compute_layer_influence` before
``train()``, after it, or between epochs from a callback.
"""

from __future__ import annotations

import os

from transformers import Trainer

from .influence.arguments import InfluenceArguments
from .influence.checkpoint import data_provenance
from .influence.engine import InfluenceEngine
from .influence.runner import run_influence
from .influence.scores import LayerInfluenceScores


class LayerInfluenceTrainer(Trainer):
    """A ``Trainer`` with :meth:`compute_layer_influence`.

    Training a LayerIF LoRA-MoE adapter: the router losses are added to the task loss by the model and scaled for
    gradient accumulation (a :class:`~hf_layerif.LayerIFRouterCallback` is added automatically), and the logs
    carry a routing summary (``router/aux_loss``, ``router/entropy_mean`` / ``_min``, ``router/max_share``);
    ``router_log_per_module=True`` adds each routed module's entropy and max share.
    """

    def __init__(self, *args, router_log_per_module: bool = False, **kwargs) -> None:
        self.router_log_per_module = router_log_per_module
        super().__init__(*args, **kwargs)
        from .tuners.callback import LayerIFRouterCallback, find_layerif_model

        self._layerif_tuner = find_layerif_model(self.model)
        if self._layerif_tuner is not None:
            self.add_callback(LayerIFRouterCallback(log_statistics=False))

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if getattr(self, "_layerif_tuner", None) is not None and "loss" in logs:
            logs = {**logs, **self._layerif_tuner.router_statistics(per_module=self.router_log_per_module)}
        super().log(logs, *args, **kwargs)

    def compute_layer_influence(self, train_dataset=None, eval_dataset=None, *, args: InfluenceArguments | None = None,
                                output_dir: str | os.PathLike | None = None, progress: bool = True,
                                dataset_names: dict[str, str] | None = None, overwrite: bool = False,
                                **options) -> LayerInfluenceScores:
        """Per-block influence (METHOD §1–3) of ``train_dataset`` samples on the mean loss of ``eval_dataset``.

        Args:
            train_dataset, eval_dataset: default to the Trainer's own datasets; they are collated by the
                Trainer's ``data_collator`` (rows must already be tokenized, as for training).
            args, options: :class:`~hf_layerif.InfluenceArguments` and overrides. The batch size per process is
                the Trainer's ``per_device_eval_batch_size``.
            output_dir: where the scores are saved and the run checkpoints (default: not saved); the finished scores
                of an identical call there are loaded unless ``overwrite``.
            dataset_names: Hub dataset ids ``{"train": ..., "validation": ...}`` for the provenance and model
                cards (read from Hub-loaded datasets when not given).

        Returns:
            :class:`~hf_layerif.LayerInfluenceScores` (identical on every process; saved by the main one).
        """
        train = self.train_dataset if train_dataset is None else train_dataset
        evals = self.eval_dataset if eval_dataset is None else eval_dataset
        if train is None or evals is None:
            raise ValueError("compute_layer_influence needs a training and a validation dataset: pass them, or give "
                             "the Trainer train_dataset= and eval_dataset=.")
        if isinstance(evals, dict):
            raise ValueError(f"eval_dataset is a dict of {sorted(evals)}; pass the one to score against as eval_dataset=.")
        for name, ds in (("train_dataset", train), ("eval_dataset", evals)):
            if len(ds) == 0:
                raise ValueError(f"{name} is empty: give at least one sample.")
        if "batch_size" in options:
            raise ValueError("LayerInfluenceTrainer uses the Trainer's dataloaders: set per_device_eval_batch_size in "
                             "TrainingArguments instead of batch_size=.")
        influence_args = (args or InfluenceArguments()).replace(batch_size=self.args.per_device_eval_batch_size, **options)
        engine = InfluenceEngine(self.model, influence_args, accelerator=self.accelerator,
                                 autocast=self.autocast_smart_context_manager,
                                 progress=progress and not self.args.disable_tqdm)
        data_fp = data_provenance(train, evals, train, evals, dataset_names)
        return run_influence(engine, lambda: self.get_test_dataloader(train), lambda: self.get_test_dataloader(evals),
                             len(train), len(evals), data_fp, output_dir=output_dir, overwrite=overwrite)
