"""What a Hub folder can hold beside an allocation: one class per kind of artifact.

Each artifact says which objects it stages (:meth:`HubArtifact.matches`), which allocation goes with it, which
files are its own, how it writes them into the staging folder, and how its model card reads (card metadata,
template and variables). :func:`artifact_for` picks the artifact for a ``model=`` argument;
:func:`~hf_layerif.hub.push.write_hub_folder` stages and renders through this protocol alone, so a new kind of
artifact is one new class here and one entry in :data:`ARTIFACTS`.

The hub never imports the pruning or tuner code: a pruner is recognised by its public methods (``prune``,
``report``, ``save_files``) and everything the card shows is read back from the JSON files staged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from ..allocation.allocation import Allocation
from ..utils.io import display_name, portable_source, read_json, write_json
from .cards import ARXIV_TAG, render_card

SELECTION_PLOT_FILE = "selection.png"  # written by the pruner for allocation="auto" (pruning/selection.py)

# PEFT task types -> Hub pipeline tags
PIPELINE_TAGS = {"CAUSAL_LM": "text-generation", "SEQ_CLS": "text-classification", "SEQ_2_SEQ_LM": "text2text-generation",
                 "TOKEN_CLS": "token-classification", "QUESTION_ANS": "question-answering",
                 "FEATURE_EXTRACTION": "feature-extraction"}
# model class suffixes -> Hub pipeline tags
ARCHITECTURE_TAGS = {"ForCausalLM": "text-generation", "ForSequenceClassification": "text-classification",
                     "ForTokenClassification": "token-classification", "ForQuestionAnswering": "question-answering",
                     "ForConditionalGeneration": "text2text-generation"}


LIBRARY_TAG = "layerif"  # every card's first tag


def method_tag(allocation: Allocation) -> str:
    """The card tag of the allocation's method (a method named like the library tag gets ``-allocation`` added)."""
    return allocation.method if allocation.method != LIBRARY_TAG else f"{LIBRARY_TAG}-allocation"


def _hyper_text(allocation: Allocation) -> str:
    return ", ".join(f"{k} = {v}" for k, v in sorted(allocation.hyperparameters.items()) if v is not None)


def scores_text(allocation: Allocation) -> str:
    """One sentence on the influence scores behind an allocation (estimator, data, adapter protocol, stability)."""
    scores = allocation.provenance.get("scores")
    if not scores:
        from ..allocation.methods import allocation_method

        try:
            reads_scores = allocation_method(allocation.kind, allocation.method).source == "scores"
        except ValueError:  # a method registered in another session: say only what the file shows
            reads_scores = False
        return "given directly" if reads_scores else "model-centric metric or uniform baseline (no influence scores)"
    estimator = (scores.get("estimator") or {}).get("name")
    data = scores.get("data") or {}
    text = (f"LayerIF influence ({estimator}, aggregation {scores.get('aggregation')}) over {data.get('num_train')} "
            f"training and {data.get('num_validation')} validation samples (fingerprints {data.get('train')} / "
            f"{data.get('validation')})")
    protocol = scores.get("protocol") or {}
    if protocol:
        adapter = {"fitted": f"a LoRA adapter fitted {(scores.get('arguments') or {}).get('fit_steps')} steps to the "
                             "training samples", "fresh": "a freshly initialised LoRA adapter",
                   "trained": "the LoRA adapter as trained"}.get(protocol.get("adapter"), "the adapter")
        draws = protocol.get("draws") or 1
        text += f"; scored on {adapter}" + (f", averaged over {draws} draws" if draws > 1 else "")
    agreement = scores.get("agreement") or {}
    figures = []
    if "draws" in agreement:
        figures.append(f"mean pairwise Spearman between draws {agreement['draws']:.2f}")
    if "bootstrap" in agreement:
        figures.append(f"5th-percentile bootstrap Spearman {agreement['bootstrap']:.2f}")
    if "reproducibility" in agreement:
        figures.append(f"predicted Spearman with an independent run of the protocol {agreement['reproducibility']:.2f}")
    if figures:
        text += "; ranking stability: " + ", ".join(figures)
    return text


def _copy_or_save(model, local: Path, save) -> None:
    """Put the artifact's files into ``local``: copy a folder written before (nothing when it *is* ``local``:
    re-rendering a card in place), or ``save(local)`` an in-memory object."""
    if isinstance(model, (str, os.PathLike)):
        if Path(model).resolve() != local.resolve():
            shutil.copytree(model, local, dirs_exist_ok=True)
    else:
        save(local)


class HubArtifact:
    """An allocation alone, and the base of the artifacts staged beside one.

    Attributes (class level): ``kind`` (the name :func:`~hf_layerif.hub.push.write_hub_folder` returns),
    ``allocation_kind`` (the allocation kind that goes with it; ``None``: any), ``files`` (files that only this kind
    of artifact stages: a folder holding another kind's files is never reused for it), ``commit_suffix`` (added to
    the default commit message). After :meth:`stage`, ``info`` holds what the card needs from the staged files.
    """

    kind: ClassVar[str] = "allocation"
    allocation_kind: ClassVar[str | None] = None
    files: ClassVar[tuple[str, ...]] = ()
    commit_suffix: ClassVar[str] = ""

    def __init__(self, model=None):
        self.model = model
        self.info: dict[str, Any] = {}

    @classmethod
    def matches(cls, model) -> bool:
        return model is None

    def check(self, allocation: Allocation) -> None:
        """Raise ``ValueError`` when ``allocation`` does not go with this artifact."""
        if self.allocation_kind is not None and allocation.kind != self.allocation_kind:
            raise ValueError(f"a {self.kind.replace('_', '-')} goes with a {self.allocation_kind} allocation "
                             f"(kind={self.allocation_kind!r}), not a {allocation.kind} one.")

    def stage(self, local: Path) -> None:
        """Write the artifact's own files into ``local`` and fill :attr:`info` from them (nothing for an
        allocation alone)."""

    def calibration_source(self) -> str | None:
        """The calibration data's source, for the card's ``datasets:`` (pruned models only)."""
        return None

    def pipeline_tag(self) -> str | None:
        """The Hub pipeline tag (none for an allocation alone: it has no weights)."""
        return None

    def card(self, allocation: Allocation, metadata: dict[str, Any], common: dict[str, Any], model_name: str,
             eval_entries, eval_rows: list[dict]):
        """The model card: ``metadata`` (base_model, datasets, license, pipeline_tag) plus this artifact's tags,
        rendered with the shared template variables ``common``."""
        from huggingface_hub import ModelCardData

        card_data = ModelCardData(**metadata, library_name="hf-layerif",
                                  tags=[LIBRARY_TAG, f"{allocation.kind}-allocation", method_tag(allocation), ARXIV_TAG])
        usage = ("config = allocation.to_peft_config(r=8, lora_alpha=16)  # LoRA-MoE experts per block"
                 if allocation.kind == "experts" else
                 "ratios = allocation.ratios_for(model)  # sparsity per linear module")
        summary = (f"Achieved global sparsity: {allocation.achieved_sparsity:.6f}." if allocation.kind == "sparsity"
                   else f"Total experts: {sum(allocation.values)}.")
        return render_card("allocation", card_data, kind_title=allocation.kind.capitalize(), method=allocation.method,
                           hyperparameters_text=_hyper_text(allocation), value_header=allocation.kind, summary=summary,
                           usage=usage, architecture=allocation.model.get("architecture"),
                           num_blocks=allocation.num_blocks, revision=allocation.model.get("revision"),
                           scores_text=scores_text(allocation), created=allocation.created, **common)


class PrunedModelArtifact(HubArtifact):
    """A pruned model (a ``LayerIFPruner`` after ``prune()``, or the folder it saved) with its sparsity allocation."""

    kind = "pruned"
    allocation_kind = "sparsity"
    files = ("model.safetensors", "pruning_config.json", "pruning_report.json")
    commit_suffix = " and pruned model"

    @classmethod
    def matches(cls, model) -> bool:
        if hasattr(model, "report") and hasattr(model, "save_files") and hasattr(model, "prune"):
            return True
        path = Path(model) if isinstance(model, (str, os.PathLike)) else None
        return (path is not None and path.is_dir() and not (path / "adapter_config.json").exists()
                and ((path / "pruning_config.json").exists() or (path / "config.json").exists()))

    def stage(self, local: Path) -> None:
        _copy_or_save(self.model, local, lambda folder: self.model.save_files(folder))
        # read back what was saved (JSON): the hub needs no pruning class, only the files' fields
        config = SimpleNamespace(**read_json(local / "pruning_config.json"))
        report = read_json(local / "pruning_report.json")
        calibration = report.get("calibration") or {}
        model_config = read_json(local / "config.json") if (local / "config.json").exists() else {}
        self.info = dict(
            architectures=model_config.get("architectures"),
            calibration_source=calibration.get("source") or (config.calibration if calibration.get("nsamples") else None),
            method=config.method, structure=config.structure, sparsity=config.sparsity,
            achieved=report["global"]["achieved"], calibration_text=self._calibration_text(calibration, config),
            pruned_rows=[{"name": n, "requested": f"{b['requested']:.4f}", "achieved": f"{b['achieved']:.4f}"}
                         for n, b in zip(report["block_names"], report["blocks"])],
            **self._selection_variables(report.get("selection"), local))

    @staticmethod
    def _calibration_text(calibration: dict, config) -> str:
        """How the pruned model was calibrated, from what the report recorded (not the config's default source)."""
        if not calibration.get("nsamples"):
            return "none (magnitude pruning uses no calibration data)"
        source = calibration.get("source") or config.calibration
        source = display_name(source) if isinstance(source, str) else source
        return (f"{calibration['nsamples']} sequences × {calibration['seqlen']} tokens from {source}, "
                f"seed {calibration.get('seed')}")

    @staticmethod
    def _selection_variables(selection: dict | None, local: Path) -> dict[str, Any]:
        """Card variables of an ``allocation="auto"`` run: one sentence, the candidates' table, and its plot
        (written by the pruner next to its report, when present)."""
        if not selection:
            return {"selection_text": None, "selection_rows": [], "selection_plot": None}
        split = selection.get("split") or {}
        source = split.get("source")
        text = (f"Chosen by held-out selection among {len(selection['candidates'])} allocations: "
                f"**{selection['chosen']}** (selection loss {selection['chosen_loss']:.4f} nats/token); uniform scored "
                f"{selection['uniform_loss']:.4f}" + _margin_text(selection) + f". Objective: {selection['objective']}; selection split: "
                f"{split.get('nsamples')} sequences × {split.get('seqlen')} tokens"
                + (f" from {display_name(source)}" if isinstance(source, str) else "")
                + (f", seed {split['seed']}" if split.get("seed") is not None else "")
                + (f", disjoint from {split['disjoint_from']}" if split.get("disjoint_from") else "")
                + f". Rule: {selection['rule']}." + _kept_text(selection))
        rows = [{"name": r["name"], "screen": f"{r['screen_loss']:.4f}",
                 "final": "-" if r["loss"] is None else f"{r['loss']:.4f}",
                 "chosen": "✓" if r["name"] == selection["chosen"] else ""} for r in selection["candidates"]]
        plot = SELECTION_PLOT_FILE if (local / SELECTION_PLOT_FILE).exists() else None
        return {"selection_text": text, "selection_rows": rows, "selection_plot": plot}

    def calibration_source(self) -> str | None:
        return self.info.get("calibration_source")

    def pipeline_tag(self) -> str | None:
        for architecture in self.info.get("architectures") or []:
            for suffix, tag in ARCHITECTURE_TAGS.items():
                if architecture.endswith(suffix):
                    return tag
        return None

    def card(self, allocation, metadata, common, model_name, eval_entries, eval_rows):
        from huggingface_hub import ModelCardData

        info = self.info
        card_data = ModelCardData(**metadata, library_name="transformers",
                                  tags=[LIBRARY_TAG, "pruned", info["method"], method_tag(allocation), ARXIV_TAG],
                                  model_name=model_name, eval_results=eval_entries)
        return render_card("pruned", card_data, method=info["method"], structure=info["structure"],
                           sparsity=info["sparsity"], achieved=info["achieved"], allocation_method=allocation.method,
                           calibration_text=info["calibration_text"], eval_rows=eval_rows,
                           selection_text=info["selection_text"], selection_rows=info["selection_rows"],
                           selection_plot=info["selection_plot"], **{**common, "rows": info["pruned_rows"]})


class LoraMoEAdapterArtifact(HubArtifact):
    """A LayerIF LoRA-MoE adapter (a ``PeftModel``, or the folder it saved) with its expert allocation."""

    kind = "lora_moe"
    allocation_kind = "experts"
    files = ("adapter_config.json", "adapter_model.safetensors")
    commit_suffix = " and LoRA-MoE adapter"

    @classmethod
    def matches(cls, model) -> bool:
        if hasattr(model, "peft_config"):
            return True
        return isinstance(model, (str, os.PathLike)) and (Path(model) / "adapter_config.json").is_file()

    def stage(self, local: Path) -> None:
        _copy_or_save(self.model, local, lambda folder: self.model.save_pretrained(folder))
        config = read_json(local / "adapter_config.json")
        if config.get("peft_type") != "LAYERIF":
            raise ValueError(f"the adapter is a {config.get('peft_type')} adapter, not a LayerIF LoRA-MoE one.")
        base = config.get("base_model_name_or_path")
        if base and portable_source(base) != base:  # the staged copy names a local base model by its folder name
            config["base_model_name_or_path"] = portable_source(base)
            write_json(local / "adapter_config.json", config)
        self.info = {"adapter_config": config}

    def pipeline_tag(self) -> str | None:
        return PIPELINE_TAGS.get(str(self.info["adapter_config"].get("task_type") or ""), None)

    def card(self, allocation, metadata, common, model_name, eval_entries, eval_rows):
        from huggingface_hub import ModelCardData

        config = self.info["adapter_config"]
        card_data = ModelCardData(**metadata, base_model_relation="adapter" if metadata.get("base_model") else None,
                                  library_name="peft", tags=[LIBRARY_TAG, "lora-moe", "lora", method_tag(allocation), ARXIV_TAG],
                                  model_name=model_name, eval_results=eval_entries)
        return render_card("lora_moe", card_data, total_experts=sum(config["experts_per_layer"]),
                           allocation_method=allocation.method, r=config["r"], lora_alpha=config["lora_alpha"],
                           top_k=config["top_k"], router_aux_loss_coef=config["router_aux_loss_coef"],
                           eval_rows=eval_rows, **common)


# the artifacts a model= argument can be, tried in order (the allocation alone matches model=None only)
ARTIFACTS: tuple[type[HubArtifact], ...] = (HubArtifact, LoraMoEAdapterArtifact, PrunedModelArtifact)


def artifact_for(model) -> HubArtifact:
    """The artifact that stages ``model`` (``None``: the allocation alone). Raises ``ValueError`` naming what
    ``model=`` may be."""
    for artifact in ARTIFACTS:
        if artifact.matches(model):
            return artifact(model)
    raise ValueError("model= must be a LayerIFPruner (after prune()), a PeftModel with a LayerIF adapter, or a folder "
                     "written by one of them.")


def _kept_text(selection: dict) -> str:
    """`` X had the lowest objective ...`` when the margin rule kept another allocation (uniform, as a rule)."""
    lowest = selection.get("lowest_objective")
    if not lowest or lowest == selection.get("chosen"):
        return ""
    row = next((r for r in selection.get("candidates", []) if r.get("name") == lowest), {})
    delta, se = row.get("delta_to_uniform"), row.get("delta_se")
    evidence = "" if delta is None or se is None else f" ({delta:+.4f} ± {se:.4f} nats/token)"
    return (f" {lowest} had the lowest objective but beat uniform by less than {selection.get('min_margin_se', 0):g} "
            f"paired standard errors{evidence}, so {selection['chosen']} was kept.")


def _margin_text(selection: dict) -> str:
    """`` (difference −Δ ± SE over n sequences)`` for a chosen allocation other than uniform, when recorded."""
    chosen = next((r for r in selection.get("candidates", []) if r.get("name") == selection.get("chosen")), None)
    if not chosen or chosen.get("delta_to_uniform") is None or chosen["name"] == "uniform":
        return ""
    se = chosen.get("delta_se")
    return (f"; the chosen one's difference to uniform, paired over the selection sequences: "
            f"{chosen['delta_to_uniform']:+.4f}" + ("" if se is None else f" ± {se:.4f}") + " nats/token")
