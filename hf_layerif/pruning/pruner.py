"""``LayerIFPruner``: prune a model to a global sparsity with per-block ratios, block by block (Optimum-style).

Calibration runs block-sequentially (:class:`~hf_layerif.calibration.BlockSequentialRunner`): block l's
statistics come from the outputs of the already pruned blocks < l, and only one block's calibration activations
are held at a time. Models dispatched with ``device_map`` and CPU-offloaded models (weights written back into the
offload map) both work.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch
from torch import nn

from ..allocation.methods import ALLOCATION_METHODS, allocation_method
from ..calibration import BlockSequentialRunner, get_calibration_and_selection_data, get_calibration_data
from ..models.blocks import find_transformer_blocks
from ..models.checks import check_finite_weights, check_sequence_length, model_max_length
from ..utils.io import normalize_permissions, portable_source
from ..utils.logging import get_logger
from .blockwise import collect_block_statistics, prune_block_linears
from .config import AUTO, PRUNING_CONFIG_FILE, PruningConfig
from .methods import pruning_method
from .model_inputs import compute_model_inputs
from .report import REPORT_FILE, ModuleResult, PruningReport

logger = get_logger(__name__)


def _describe_source(calibration_dataset, config: PruningConfig) -> str:
    """What the calibration sequences were drawn from, as the card and report should say it."""
    if calibration_dataset is None:
        return portable_source(str(config.calibration))
    if isinstance(calibration_dataset, torch.Tensor):
        return "token ids given to prune()"
    if isinstance(calibration_dataset, (list, tuple)):
        return f"{len(calibration_dataset)} texts given to prune()"
    return portable_source(str(calibration_dataset))


class LayerIFPruner:
    """Prune ``model`` with :meth:`prune`, then :meth:`save_pretrained` a plain dense model (zeros kept).

    Args:
        model: a causal LM (``PreTrainedModel``), possibly dispatched or offloaded.
        tokenizer: its tokenizer (calibration data from text).
    """

    def __init__(self, model: nn.Module, tokenizer=None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.blocks = find_transformer_blocks(model)
        self.report: PruningReport | None = None
        self.config: PruningConfig | None = None
        self.allocation = None

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, **model_kwargs) -> LayerIFPruner:
        """The model (``AutoModelForCausalLM``) and tokenizer of a local folder or Hub repo. A folder (or repo)
        written by :meth:`save_pretrained` also restores ``config``, ``report`` and ``allocation``, so a pruned
        model reloads with what made it (and ``push_to_hub`` / ``save_pretrained`` work again)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..allocation import Allocation
        from ..allocation.allocation import ALLOCATION_FILE

        revision = model_kwargs.get("revision")
        model = AutoModelForCausalLM.from_pretrained(model_id_or_path, **model_kwargs)
        local = Path(model_id_or_path).expanduser()
        has_tokenizer = not local.is_dir() or any((local / name).exists() for name in TOKENIZER_FILES)
        tokenizer = AutoTokenizer.from_pretrained(model_id_or_path, revision=revision) if has_tokenizer else None
        pruner = cls(model.eval(), tokenizer)  # a folder saved without a tokenizer reloads without one
        if _has_file(model_id_or_path, PRUNING_CONFIG_FILE, revision):
            pruner.config = PruningConfig.from_pretrained(model_id_or_path, revision=revision)
            if _has_file(model_id_or_path, REPORT_FILE, revision):
                pruner.report = PruningReport.from_pretrained(model_id_or_path, revision=revision)
            if _has_file(model_id_or_path, ALLOCATION_FILE, revision):
                pruner.allocation = Allocation.from_pretrained(model_id_or_path, revision=revision)
        return pruner

    # --- ratios -------------------------------------------------------------------------------------------
    def resolve_allocation(self, config: PruningConfig, calibration_ids: torch.Tensor | None,
                           progress: bool = True):
        """The :class:`~hf_layerif.allocation.Allocation` of ``config.allocation`` for this model, or None for
        uniform ratios; changes nothing (the pruner keeps what :meth:`prune` used in ``self.allocation``).

        ``config.allocation`` may be: None (uniform); the name of a registered sparsity allocation method whose
        input comes from the model (``"uniform"``, ``"owl"``: outlier ratios on ``calibration_ids``,
        ``"alphapruning"``: PL_Alpha_Hill); an :class:`~hf_layerif.allocation.Allocation` or a folder/file holding
        one; or ``LayerInfluenceScores`` (mapped with ``config.epsilon`` / ``config.reverse``).
        """
        from ..allocation import Allocation, sparsity_allocation

        allocation = config.allocation
        if allocation is None or allocation == "uniform":
            return None
        if isinstance(allocation, str) and allocation in ALLOCATION_METHODS["sparsity"]:
            method = allocation_method("sparsity", allocation)
            inputs = compute_model_inputs(self.model, config, [method.source], calibration_ids, progress)
            return sparsity_allocation(None, config.sparsity, model=self.model, method=allocation,
                                       epsilon=config.epsilon, reverse=config.reverse, owl_lambda=config.owl_lambda,
                                       owl_m=config.owl_m, **inputs)
        if isinstance(allocation, (str, os.PathLike)):
            allocation = Allocation.from_pretrained(allocation)
        if isinstance(allocation, Allocation):
            if allocation.kind != "sparsity":
                raise ValueError("the allocation holds experts, not sparsity ratios: pass a sparsity allocation.")
            allocation.check_fits(self.model)
            achieved = allocation.achieved_sparsity
            if achieved is not None and abs(achieved - config.sparsity) > 1e-6:
                raise ValueError(f"the allocation's global sparsity is {achieved:.6f} but config.sparsity is "
                                 f"{config.sparsity}; make them agree.")
            return allocation
        if hasattr(allocation, "block_scores"):  # LayerInfluenceScores
            return sparsity_allocation(allocation, config.sparsity, model=self.model, epsilon=config.epsilon,
                                       reverse=config.reverse)
        raise ValueError(f"unsupported allocation {allocation!r}: use None, 'uniform', 'owl', 'alphapruning', 'auto', "
                         "an Allocation, LayerInfluenceScores or a folder with layerif_allocation.json.")

    def block_ratios(self, allocation, config: PruningConfig) -> list[float]:
        """Sparsity per block of a resolved allocation (None: ``config.sparsity`` everywhere)."""
        return [config.sparsity] * len(self.blocks) if allocation is None else list(allocation.values)

    def needs_calibration(self, config: PruningConfig) -> bool:
        """True when the method or the allocation reads calibration activations."""
        if pruning_method(config.method).needs_calibration:
            return True
        name = config.allocation if isinstance(config.allocation, str) else None
        return name in ALLOCATION_METHODS["sparsity"] and allocation_method("sparsity", name).source == "outlier_ratios"

    def calibration_ids(self, config: PruningConfig, calibration_dataset=None) -> torch.Tensor:
        self._check_seqlen(config, calibration_dataset)
        if isinstance(calibration_dataset, torch.Tensor):
            ids = calibration_dataset
        else:
            ids = get_calibration_data(self._tokenizer_for_text(), self._source(config, calibration_dataset),
                                       config.nsamples, config.seqlen, config.seed)
        return self._check_ids(ids, "calibration")

    def calibration_and_selection_ids(self, config: PruningConfig, calibration_dataset=None,
                                      selection_dataset=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Calibration ids [nsamples, seqlen] and the selection split of ``allocation="auto"`` [n, seqlen], with a
        description of the split. From text, the split is drawn (``selection_seed``) from documents calibration did
        not use; given calibration token ids need selection token ids (``selection_dataset``) as well."""
        self._check_seqlen(config, calibration_dataset)
        if isinstance(selection_dataset, torch.Tensor):
            calibration = self.calibration_ids(config, calibration_dataset)
            split = {"source": "token ids given to prune()", "seed": None, "disjoint_from": "given by the caller"}
            return calibration, self._check_ids(selection_dataset, "selection"), split
        if isinstance(calibration_dataset, torch.Tensor):
            raise ValueError("allocation='auto' scores candidates on a selection split that must not overlap the "
                             "calibration tokens: with calibration token ids, pass selection token ids too "
                             "(prune(..., selection_dataset=ids [n, seqlen])), or give calibration as text or a file.")
        tokenizer = self._tokenizer_for_text()
        if selection_dataset is not None:  # another text source: drawn with the selection seed
            calibration = self.calibration_ids(config, calibration_dataset)
            selection = get_calibration_data(tokenizer, selection_dataset, config.selection_nsamples, config.seqlen,
                                             config.selection_seed)
            split = {"source": _describe_source(selection_dataset, config), "seed": config.selection_seed,
                     "disjoint_from": "given by the caller"}
            return calibration, self._check_ids(selection, "selection"), split
        source = self._source(config, calibration_dataset)
        calibration, selection = get_calibration_and_selection_data(
            tokenizer, source, config.nsamples, config.seqlen, config.seed, config.selection_nsamples,
            config.selection_seed)
        split = {"source": _describe_source(calibration_dataset, config), "seed": config.selection_seed,
                 "disjoint_from": "the calibration documents (none of their windows is drawn)"}
        return self._check_ids(calibration, "calibration"), self._check_ids(selection, "selection"), split

    def _tokenizer_for_text(self):
        if self.tokenizer is None:
            raise ValueError("calibration from text needs a tokenizer: LayerIFPruner(model, tokenizer).")
        return self.tokenizer

    @staticmethod
    def _source(config: PruningConfig, calibration_dataset):
        return calibration_dataset if calibration_dataset is not None else config.calibration

    def _fit_to_context(self, config: PruningConfig, calibration_dataset) -> PruningConfig:
        """``config`` with ``seqlen`` capped at the model's context (said once), for calibration drawn from text."""
        if isinstance(calibration_dataset, torch.Tensor):
            return config
        seqlen = check_sequence_length(config.seqlen, self.model, "seqlen")  # the rule `hf-layerif allocate` uses
        return config if seqlen == config.seqlen else dataclasses.replace(config, seqlen=seqlen)

    def _check_seqlen(self, config: PruningConfig, calibration_dataset) -> None:
        limit = model_max_length(self.model)
        if limit is not None and not isinstance(calibration_dataset, torch.Tensor) and config.seqlen > limit:
            raise ValueError(f"seqlen={config.seqlen} calibration tokens exceed the model's context of {limit} "
                             f"positions; pass seqlen <= {limit} (--seqlen {limit}).")

    def _check_ids(self, ids: torch.Tensor, what: str) -> torch.Tensor:
        limit = model_max_length(self.model)
        if ids.dim() != 2 or ids.numel() == 0:
            raise ValueError(f"{what} token ids must be a non-empty [nsamples, seqlen] tensor, got shape {tuple(ids.shape)}.")
        if limit is not None and ids.shape[1] > limit:
            raise ValueError(f"{what} sequences of {ids.shape[1]} tokens exceed the model's context of {limit} "
                             "positions; lower seqlen.")
        return ids

    # --- pruning ------------------------------------------------------------------------------------------
    def prune(self, config: PruningConfig | None = None, calibration_dataset=None, progress: bool = True,
              selection_dataset=None, selection_dir: str | os.PathLike | None = None) -> PruningReport:
        """Prune in place and return the :class:`PruningReport`.

        ``calibration_dataset``: token ids [nsamples, seqlen], texts, a file or a Hub id (default ``config.calibration``).
        With ``config.allocation="auto"`` (:mod:`hf_layerif.pruning.selection`): ``selection_dataset`` is the
        held-out split the candidates are scored on (token ids [n, seqlen] or another text source; default: drawn
        from the calibration source's unused documents), and ``selection_dir`` keeps finished stages on disk so that
        a re-run resumes. The report's ``selection`` lists every candidate's objective.
        """
        config = self._fit_to_context(config or PruningConfig(), calibration_dataset)
        check_finite_weights(self.model, "the model to prune")
        started = time.time()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        method = pruning_method(config.method)
        selection = None
        if config.allocation == AUTO:
            from .selection import select_and_prune

            scores = _load_scores(config.scores)
            ids, selection_ids, split = self.calibration_and_selection_ids(config, calibration_dataset, selection_dataset)
            outcome = select_and_prune(self, config, ids, selection_ids, scores, progress, selection_dir, split)
            self.allocation, results, selection = outcome.allocation, outcome.modules, outcome.record
            ratios = list(self.allocation.values)
            return self._finish(config, ids, ratios, results, started, calibration_dataset, selection)
        ids = self.calibration_ids(config, calibration_dataset) if self.needs_calibration(config) else None
        self.allocation = self.resolve_allocation(config, ids, progress)
        ratios = self.block_ratios(self.allocation, config)
        results: list[ModuleResult] = []

        def prune_block(index: int, block: nn.Module, forward=None) -> None:
            stats = collect_block_statistics(block, method, config, forward)
            results.extend(prune_block_linears(block, index, self.blocks.names[index], ratios[index], method, config,
                                               stats))

        with torch.no_grad():
            if not method.needs_calibration:
                from tqdm.auto import tqdm

                for index, block in enumerate(tqdm(self.blocks.modules, desc="pruning blocks", disable=not progress)):
                    prune_block(index, block)
            else:
                runner = BlockSequentialRunner(self.model, ids, batch_size=config.batch_size, blocks=self.blocks,
                                               progress=progress, **config.activation_kwargs())
                runner.run(lambda index, block, forward: prune_block(index, block, forward))
        return self._finish(config, ids, ratios, results, started, calibration_dataset, None)

    def _finish(self, config: PruningConfig, ids, ratios, results, started: float, calibration_dataset,
                selection: dict | None) -> PruningReport:
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        self.config = config
        extra = {"allocation": getattr(self.allocation, "method", "uniform"),
                 "calibration": {"nsamples": None if ids is None else int(ids.shape[0]),
                                 "seqlen": None if ids is None else int(ids.shape[1]),
                                 "seed": config.seed,
                                 "source": _describe_source(calibration_dataset, config) if ids is not None else None}}
        if selection is not None:
            extra["selection"] = selection
        self.report = PruningReport(config.method, config.structure, list(self.blocks.names), results, list(ratios),
                                    seconds=time.time() - started, peak_memory_bytes=peak, extra=extra)
        return self.report

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the pruned model with its allocation and a model card in one commit
        (:func:`hf_layerif.hub.push_allocation_to_hub`)."""
        from ..hub import push_allocation_to_hub

        if self.report is None:
            raise ValueError("nothing to push yet: call prune() first.")
        return push_allocation_to_hub(self.card_allocation(), repo_id, model=self, **kwargs)

    def card_allocation(self):
        """The allocation a card and the saved folder show: the one used, or the uniform one."""
        from ..allocation import sparsity_allocation

        return self.allocation or sparsity_allocation(None, self.config.sparsity, model=self.model, method="uniform")

    # --- saving -------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, eval_results: dict | None = None,
                        license: str | None = None, base_model: str | None = None) -> Path:
        """A plain dense safetensors model (loads with any transformers version; zeros kept), its tokenizer,
        ``layerif_allocation.json`` (uniform ratios are recorded as a uniform allocation) and its plot,
        ``pruning_config.json``, ``pruning_report.json`` and a model card (``README.md``)."""
        from ..hub import write_hub_folder

        if self.report is None:
            raise ValueError("nothing to save yet: call prune() first.")
        folder, _ = write_hub_folder(self.card_allocation(), save_directory, model=self, eval_results=eval_results,
                                     license=license, base_model=base_model)
        return folder

    def save_files(self, save_directory: str | os.PathLike) -> Path:
        """The model, tokenizer, allocation, config and report, without the card (used by ``save_pretrained``)."""
        if self.report is None:
            raise ValueError("nothing to save yet: call prune() first.")
        check_finite_weights(self.model, "the pruned model")
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        if self.allocation is not None:
            self.allocation.save_pretrained(path)
        self.config.save_pretrained(path)
        self.report.save_pretrained(path)
        if "selection" in self.report.extra:
            from .selection import SELECTION_PLOT_FILE, plot_selection

            plot_selection(self.report.extra["selection"], path / SELECTION_PLOT_FILE)
        normalize_permissions(path)
        return path


def _load_scores(scores):
    """``PruningConfig.scores``: ``LayerInfluenceScores`` or a per-block vector as given, a string loaded as the
    ``LayerInfluenceScores`` of a folder or Hub repo."""
    if not isinstance(scores, (str, os.PathLike)):
        return scores
    from ..influence.scores import LayerInfluenceScores

    return LayerInfluenceScores.from_pretrained(scores)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _has_file(repo_id_or_path: str, filename: str, revision: str | None) -> bool:
    """Whether a local folder or a Hub repo holds ``filename`` (False when the Hub cannot be asked)."""
    path = Path(repo_id_or_path).expanduser()
    if path.exists():
        return (path / filename).is_file()
    from ..utils.offline import go_offline, is_connection_error, is_offline

    if is_offline():
        return False
    try:
        from huggingface_hub import file_exists

        return bool(file_exists(str(repo_id_or_path), filename, revision=revision))
    except (OSError, ValueError) as err:  # offline, or a repo the Hub does not list: the model itself was loaded
        if is_connection_error(err):
            go_offline(f"{type(err).__name__} asking for {filename}")
        return False

