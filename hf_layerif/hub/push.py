"""``push_allocation_to_hub``: an allocation (and the pruned model or LoRA-MoE adapter) in one Hub commit.

Everything is first written to a local folder (default: a new one under the system's temporary folder, removed
after a successful upload); then
``HfApi.create_repo(exist_ok=True)`` and **one** ``create_commit`` listing every file (``upload_folder`` may
split into several commits). A failed upload leaves the folder in place and says how to retry
(:func:`push_folder_to_hub`). Tokens are only ever passed to the ``HfApi``: never written into a card, a log or a
file. ``load_allocation`` reads JSON only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..allocation.allocation import ALLOCATION_FILE, Allocation, plot_allocations
from ..data.loading import looks_local
from ..utils.io import display_name, is_local_path, normalize_permissions, portable_source, write_json
from ..utils.logging import get_logger
from .cards import ARXIV_TAG, eval_results_for, render_card

logger = get_logger(__name__)

PLOT_FILE = "layerif_allocation.png"
SELECTION_PLOT_FILE = "selection.png"  # written by the pruner for allocation="auto" (pruning/selection.py)
STAGING_MARKER = ".hf-layerif-staging"


def _default_local_dir(repo_id: str) -> Path:
    """A new staging folder under the system's temporary folder (removed after a successful upload, kept after a
    failed one so that it can be retried)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"hf-layerif-upload-{repo_id.replace('/', '--')}-"))


def _rows(allocation: Allocation) -> list[dict[str, str]]:
    scores = allocation.scores or [None] * allocation.num_blocks
    rows = []
    for name, value, score in zip(allocation.model["block_names"], allocation.values, scores):
        rows.append({"name": name, "value": str(value) if allocation.kind == "experts" else f"{value:.4f}",
                     "score": "-" if score is None else f"{score:.6g}"})
    return rows


# the Hub datasets named by a calibration source (the pruning papers' default is C4's first shard)
CALIBRATION_HUB_IDS = {"c4": "allenai/c4"}
# PEFT task types -> Hub pipeline tags
PIPELINE_TAGS = {"CAUSAL_LM": "text-generation", "SEQ_CLS": "text-classification", "SEQ_2_SEQ_LM": "text2text-generation",
                 "TOKEN_CLS": "token-classification", "QUESTION_ANS": "question-answering",
                 "FEATURE_EXTRACTION": "feature-extraction"}
# model class suffixes -> Hub pipeline tags
ARCHITECTURE_TAGS = {"ForCausalLM": "text-generation", "ForSequenceClassification": "text-classification",
                     "ForTokenClassification": "token-classification", "ForQuestionAnswering": "question-answering",
                     "ForConditionalGeneration": "text2text-generation"}


def _datasets(allocation: Allocation, info: dict[str, Any]) -> list[str] | None:
    """Hub dataset ids for the card's ``datasets:``: the scored training / validation data (when the scores
    recorded Hub ids) and a pruned model's calibration data (when it came from the Hub). Local files are not
    listed: they are no dataset ids."""
    data = (allocation.provenance.get("scores") or {}).get("data") or {}
    names = [data.get(k) for k in ("train_name", "validation_name")]
    source = info.get("calibration_source")
    if isinstance(source, str):
        source = CALIBRATION_HUB_IDS.get(source, source.partition(":")[0])
        if source.count("/") == 1 and " " not in source and not is_local_path(source) and not looks_local(source):
            names.append(source)
    unique = list(dict.fromkeys(n for n in names if n))
    return unique or None


def _pipeline_tag(kind: str, info: dict[str, Any]) -> str | None:
    """The Hub pipeline tag of what is pushed: none for an allocation alone (no weights), the adapter's task type
    for a LoRA-MoE adapter, the model class for a pruned model."""
    if kind == "lora_moe":
        return PIPELINE_TAGS.get(str(info["adapter_config"].get("task_type") or ""), None)
    if kind == "pruned":
        for architecture in info.get("architectures") or []:
            for suffix, tag in ARCHITECTURE_TAGS.items():
                if architecture.endswith(suffix):
                    return tag
    return None


def _hyper_text(allocation: Allocation) -> str:
    return ", ".join(f"{k} = {v}" for k, v in sorted(allocation.hyperparameters.items()) if v is not None)


def _scores_text(allocation: Allocation) -> str:
    scores = allocation.provenance.get("scores")
    if not scores:
        return "model-centric metric or uniform baseline (no influence scores)" if allocation.method != "layerif" else "given directly"
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
    if figures:
        text += "; ranking stability: " + ", ".join(figures)
    return text


def _selection_variables(selection: dict | None, local: Path) -> dict[str, Any]:
    """Card variables of an ``allocation="auto"`` run: one sentence, the candidates' table, and its plot (written by
    the pruner next to its report, when present)."""
    if not selection:
        return {"selection_text": None, "selection_rows": [], "selection_plot": None}
    split = selection.get("split") or {}
    source = split.get("source")
    text = (f"Chosen by held-out selection among {len(selection['candidates'])} allocations: "
            f"**{selection['chosen']}** (selection loss {selection['chosen_loss']:.4f} nats/token); uniform scored "
            f"{selection['uniform_loss']:.4f}. Objective: {selection['objective']}; selection split: "
            f"{split.get('nsamples')} sequences × {split.get('seqlen')} tokens"
            + (f" from {display_name(source)}" if isinstance(source, str) else "")
            + (f", seed {split['seed']}" if split.get("seed") is not None else "")
            + (f", disjoint from {split['disjoint_from']}" if split.get("disjoint_from") else "")
            + f". Rule: {selection['rule']}.")
    rows = [{"name": r["name"], "screen": f"{r['screen_loss']:.4f}",
             "final": "-" if r["loss"] is None else f"{r['loss']:.4f}",
             "chosen": "✓" if r["name"] == selection["chosen"] else ""} for r in selection["candidates"]]
    plot = SELECTION_PLOT_FILE if (local / SELECTION_PLOT_FILE).exists() else None
    return {"selection_text": text, "selection_rows": rows, "selection_plot": plot}


def _calibration_text(calibration: dict, config) -> str:
    """How the pruned model was calibrated, from what the report recorded (not the config's default source)."""
    if not calibration.get("nsamples"):
        return "none (magnitude pruning uses no calibration data)"
    source = calibration.get("source") or config.calibration
    source = display_name(source) if isinstance(source, str) else source
    return f"{calibration['nsamples']} sequences × {calibration['seqlen']} tokens from {source}, seed {calibration.get('seed')}"


def _classify(model) -> str:
    if model is None:
        return "allocation"
    if hasattr(model, "report") and hasattr(model, "save_files") and hasattr(model, "prune"):
        return "pruned"
    if hasattr(model, "peft_config"):
        return "lora_moe"
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        path = Path(model)
        if (path / "adapter_config.json").exists():
            return "lora_moe"
        if (path / "pruning_config.json").exists() or (path / "config.json").exists():
            return "pruned"
    raise ValueError("model= must be a LayerIFPruner (after prune()), a PeftModel with a LayerIF adapter, or a folder "
                     "written by one of them.")


def _stage(allocation: Allocation, model, kind: str, local: Path) -> dict[str, Any]:
    """Write the allocation, its plot and the model files into ``local``; return card variables."""
    local.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    in_place = isinstance(model, (str, os.PathLike)) and Path(model).resolve() == local.resolve()
    if kind == "pruned":
        if isinstance(model, (str, os.PathLike)):
            if not in_place:  # a folder already written (re-rendering its card in place copies nothing)
                shutil.copytree(model, local, dirs_exist_ok=True)
        else:
            model.save_files(local)
        # read back what was saved (JSON): the hub needs no pruning class, only the files' fields
        from ..utils.io import read_json

        config = SimpleNamespace(**read_json(local / "pruning_config.json"))
        report = read_json(local / "pruning_report.json")
        model_config = read_json(local / "config.json") if (local / "config.json").exists() else {}
        info.update(architectures=model_config.get("architectures"),
                    calibration_source=(report.get("calibration") or {}).get("source") or (
                        config.calibration if (report.get("calibration") or {}).get("nsamples") else None))
        info.update(method=config.method, structure=config.structure, sparsity=config.sparsity,
                    achieved=report["global"]["achieved"],
                    calibration_text=_calibration_text(report.get("calibration") or {}, config),
                    pruned_rows=[{"name": n, "requested": f"{b['requested']:.4f}", "achieved": f"{b['achieved']:.4f}"}
                                 for n, b in zip(report["block_names"], report["blocks"])],
                    **_selection_variables(report.get("selection"), local))
    elif kind == "lora_moe":
        if isinstance(model, (str, os.PathLike)):
            if not in_place:
                shutil.copytree(model, local, dirs_exist_ok=True)
        else:
            model.save_pretrained(local)
        from ..utils.io import read_json

        config = read_json(local / "adapter_config.json")
        if config.get("peft_type") != "LAYERIF":
            raise ValueError(f"the adapter is a {config.get('peft_type')} adapter, not a LayerIF LoRA-MoE one.")
        base = config.get("base_model_name_or_path")
        if base and portable_source(base) != base:  # the staged copy names a local base model by its folder name
            config["base_model_name_or_path"] = portable_source(base)
            write_json(local / "adapter_config.json", config)
        info.update(adapter_config=config)
    allocation.save_pretrained(local)
    plot_allocations([allocation], local / PLOT_FILE, labels=[allocation.method])
    return info


def _check_allocation(allocation) -> None:
    if not isinstance(allocation, Allocation):
        raise TypeError(
            f"allocation must be an hf_layerif Allocation, not {type(allocation).__name__}. Build one with "
            "hf_layerif.expert_allocation(scores, total_experts) / hf_layerif.sparsity_allocation(scores, sparsity), "
            "Allocation.from_values(values, kind, model) for a plain list, or load one with "
            "hf_layerif.load_allocation(path_or_repo_id)."
        )


# files that belong to one kind of staged artifact only: staging another kind beside them would upload both
_ARTIFACT_FILES = {"pruned": ("model.safetensors", "pruning_config.json", "pruning_report.json"),
                   "lora_moe": ("adapter_config.json", "adapter_model.safetensors")}


def _refuse_mixed_artifacts(local: Path, kind: str) -> None:
    """Raise when ``local`` holds the files of another kind of artifact than ``kind`` (a folder never mixes two)."""
    for other, files in _ARTIFACT_FILES.items():
        found = [name for name in files if (local / name).exists()]
        if other != kind and found:
            raise ValueError(f"{local} already holds a staged {other.replace('_', '-')} ({', '.join(found)}); staging "
                             f"{'an allocation' if kind == 'allocation' else 'a ' + kind.replace('_', '-')} there would "
                             "mix the two. Pass clean=True to empty a folder hf-layerif staged, or use another folder.")


def _prepare_staging_dir(local: Path) -> None:
    """Make ``local`` an empty staging folder, so a push uploads only what it staged now.

    A folder staged before by hf-layerif (it holds :data:`STAGING_MARKER`) is emptied; any other non-empty
    folder is refused rather than deleted or uploaded.
    """
    if local.exists() and any(local.iterdir()):
        if not (local / STAGING_MARKER).exists():
            raise ValueError(
                f"{local} is not empty and was not staged by hf-layerif: a push uploads every file of its staging "
                "folder. Pass local_dir= a new or empty folder."
            )
        shutil.rmtree(local)
    local.mkdir(parents=True, exist_ok=True)
    (local / STAGING_MARKER).write_text("staged by hf-layerif; emptied by the next push\n", encoding="utf-8")


def _base_license(hub_base: str | None, api=None) -> str | None:
    """The base model's license from its Hub card (``None`` offline or when it states none)."""
    from ..utils.offline import go_offline, is_connection_error, is_offline

    if hub_base is None or (api is None and is_offline()):
        return None
    try:
        from huggingface_hub import HfApi

        info = (api or HfApi()).model_info(hub_base)
        data = getattr(info, "card_data", None) or getattr(info, "cardData", None)
        value = data.get("license") if hasattr(data, "get") else getattr(data, "license", None)
        return str(value) if value else None
    except Exception as err:  # offline, private or missing: the caller passes license= then
        if api is None and is_connection_error(err):
            go_offline(f"{type(err).__name__} reading the card of {hub_base}")
        return None


_WARNED_MISSING: set[str] = set()
_MISSING_FIXES = {"license": "pass license= (--license), e.g. the base model's license",
                  "base_model": "pass base_model='owner/name' (--base_model), the Hub id the local model comes from",
                  "datasets": "pass dataset_names= when scoring (Hub ids of the scored data)"}


def _source_card_metadata(model) -> dict[str, str]:
    """``base_model`` and ``license`` from the README.md card of the local folder the model was loaded from (a
    pruner's model or a PEFT model's base), when there is one; empty otherwise."""
    base = getattr(model, "model", model)  # LayerIFPruner -> its model
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    source = getattr(getattr(base, "config", None), "_name_or_path", None)
    if not isinstance(source, str) or not (Path(source) / "README.md").is_file():
        return {}
    try:
        from huggingface_hub import ModelCard

        data = ModelCard.load(Path(source) / "README.md").data
    except Exception:  # noqa: BLE001 - a card that cannot be read gives nothing
        return {}
    found = {}
    for field in ("base_model", "license"):
        value = getattr(data, field, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, str) and value:
            found[field] = value
    if "base_model" not in found and "/" in str(getattr(data, "model_name", "") or ""):
        found["base_model"] = data.model_name
    return found


def _warn_missing_metadata(metadata: dict) -> None:
    """Say once per process which card metadata is missing, and how to give it."""
    for field, fix in _MISSING_FIXES.items():
        if not metadata.get(field) and field not in _WARNED_MISSING:
            _WARNED_MISSING.add(field)
            logger.warning("The model card has no %s metadata: %s.", field, fix)


def write_hub_folder(allocation: Allocation, local_dir: str | os.PathLike, *, model=None, repo_id: str | None = None,
                     eval_results: dict | None = None, clean: bool = False, license: str | None = None,
                     base_model: str | None = None) -> tuple[Path, str]:
    """Write what :func:`push_allocation_to_hub` uploads — the allocation, its plot, the model files and the model
    card (README.md) — into ``local_dir``; returns (folder, kind). Useful on its own to inspect or share offline.

    ``clean=True`` (what a push uses) first empties a folder staged before, so files of an earlier, different
    push (an adapter where now only an allocation is staged) are never uploaded again. Without ``repo_id`` the
    card's loading code uses the folder's relative path. ``license`` is the card's license (staging alone never
    asks the Hub; :func:`push_allocation_to_hub` defaults it to the base model's license there). ``base_model`` is
    the Hub id of the base model, for a model loaded from a local folder (the card's ``base_model`` metadata). A
    card without a license, base model or dataset says so once in the log.
    """
    from huggingface_hub import ModelCardData

    _check_allocation(allocation)
    kind = _classify(model)
    if kind == "lora_moe" and allocation.kind != "experts":
        raise ValueError("a LoRA-MoE adapter goes with an expert allocation (kind='experts').")
    if kind == "pruned" and allocation.kind != "sparsity":
        raise ValueError("a pruned model goes with a sparsity allocation (kind='sparsity').")
    local = Path(local_dir)
    if clean:
        _prepare_staging_dir(local)
    else:
        _refuse_mixed_artifacts(local, kind)
    own = _source_card_metadata(model)  # a local source model's own card: its base_model and license
    license = license or own.get("license")
    base_model = base_model or own.get("base_model")
    info = _stage(allocation, model, kind, local)
    model_id = allocation.model.get("model_id") or ""
    hub_base = base_model or (model_id if "/" in model_id and not is_local_path(model_id)
                              and not model_id.startswith("local:") else None)
    # titles and code never show a local absolute path: a local base model is named by its folder name
    base_model = hub_base or (display_name(model_id) if model_id else None) or allocation.model.get("architecture") or "unknown"
    method_tag = allocation.method if allocation.method != "layerif" else "layerif-allocation"
    load_target = repo_id or f"./{local.name}"
    model_name = (repo_id or local.name).split("/")[-1]
    common = dict(repo_id=load_target, base_model=base_model, library_version=allocation.library_version,
                  plot_file=PLOT_FILE, rows=_rows(allocation))
    metadata = dict(base_model=hub_base, datasets=_datasets(allocation, info), license=license,
                    pipeline_tag=_pipeline_tag(kind, info))
    _warn_missing_metadata(metadata)
    eval_entries = eval_results_for(eval_results, model_name)
    eval_rows = []
    for entry in eval_entries or []:
        eval_rows.append({"task": entry.dataset_name, "metric": entry.metric_type, "value": f"{entry.metric_value:.4f}"})
    if kind == "allocation":
        card_data = ModelCardData(**metadata, library_name="hf-layerif", tags=["layerif", f"{allocation.kind}-allocation", method_tag, ARXIV_TAG])
        usage = ("config = allocation.to_peft_config(r=8, lora_alpha=16)  # LoRA-MoE experts per block"
                 if allocation.kind == "experts" else
                 "ratios = allocation.ratios_for(model)  # sparsity per linear module")
        card = render_card("allocation", card_data, kind_title=allocation.kind.capitalize(), method=allocation.method,
                           hyperparameters_text=_hyper_text(allocation), value_header=allocation.kind,
                           summary=(f"Achieved global sparsity: {allocation.achieved_sparsity:.6f}."
                                    if allocation.kind == "sparsity" else f"Total experts: {sum(allocation.values)}."),
                           usage=usage, architecture=allocation.model.get("architecture"),
                           num_blocks=allocation.num_blocks, revision=allocation.model.get("revision"),
                           scores_text=_scores_text(allocation), created=allocation.created, **common)
    elif kind == "pruned":
        card_data = ModelCardData(**metadata, library_name="transformers",
                                  tags=["layerif", "pruned", info["method"], method_tag, ARXIV_TAG], model_name=model_name,
                                  eval_results=eval_entries)
        card = render_card("pruned", card_data, method=info["method"], structure=info["structure"],
                           sparsity=info["sparsity"], achieved=info["achieved"], allocation_method=allocation.method,
                           calibration_text=info["calibration_text"], eval_rows=eval_rows,
                           selection_text=info["selection_text"], selection_rows=info["selection_rows"],
                           selection_plot=info["selection_plot"],
                           **{**common, "rows": info["pruned_rows"]})
    else:
        config = info["adapter_config"]
        card_data = ModelCardData(**metadata, base_model_relation="adapter" if hub_base else None, library_name="peft",
                                  tags=["layerif", "lora-moe", "lora", method_tag, ARXIV_TAG], model_name=model_name,
                                  eval_results=eval_entries)
        card = render_card("lora_moe", card_data, total_experts=sum(config["experts_per_layer"]),
                           allocation_method=allocation.method, r=config["r"], lora_alpha=config["lora_alpha"],
                           top_k=config["top_k"], router_aux_loss_coef=config["router_aux_loss_coef"],
                           eval_rows=eval_rows, **common)
    card.save(local / "README.md")  # replaces any generic card PEFT / transformers wrote
    normalize_permissions(local)
    return local, kind


def push_allocation_to_hub(allocation: Allocation, repo_id: str, *, model=None, api=None, private: bool = False,
                           create_pr: bool = False, commit_message: str | None = None, eval_results: dict | None = None,
                           local_dir: str | os.PathLike | None = None, token: str | None = None,
                           license: str | None = None, base_model: str | None = None):
    """Upload ``allocation`` (plus the pruned model / LoRA-MoE adapter in ``model``) with a model card, in one commit.

    Args:
        allocation: the :class:`~hf_layerif.allocation.Allocation`.
        repo_id: ``"owner/name"``.
        model: ``None`` (allocation only), a ``LayerIFPruner`` after ``prune()``, a ``PeftModel`` with a LayerIF
            adapter, or a folder saved by either.
        api: an ``huggingface_hub.HfApi`` (injectable; default ``HfApi(token=token)``).
        eval_results: ``{task: {metric: value}}`` (or ``{"wikitext2_ppl": value}``) for the card's model-index.
        local_dir: where the files are staged, kept after the upload; by default a new folder under the system's
            temporary folder, removed once the upload succeeded (a failed upload keeps it and names it).
        license: the card's license (default: the base model's license on the Hub, when it can be read).
        base_model: the base model's Hub id, for a model loaded from a local folder.
    Returns:
        the ``CommitInfo`` of the single commit.
    """
    _check_allocation(allocation)
    temporary = local_dir is None
    local = Path(local_dir) if local_dir is not None else _default_local_dir(repo_id)
    if license is None:
        model_id = base_model or allocation.model.get("model_id") or ""
        license = _base_license(model_id if "/" in model_id and not is_local_path(model_id) else None, api)
    local, kind = write_hub_folder(allocation, local, model=model, repo_id=repo_id, eval_results=eval_results, clean=True,
                                   license=license, base_model=base_model)
    info = push_folder_to_hub(local, repo_id, api=api, private=private, create_pr=create_pr, token=token,
                              commit_message=commit_message or f"Add LayerIF {allocation.kind} allocation ({allocation.method})"
                              + {"pruned": " and pruned model", "lora_moe": " and LoRA-MoE adapter"}.get(kind, ""))
    if temporary:
        shutil.rmtree(local, ignore_errors=True)
    return info


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, *, api=None, private: bool = False,
                       create_pr: bool = False, commit_message: str = "Upload with hf-layerif", token: str | None = None):
    """Upload every file of ``folder`` to ``repo_id`` in a single commit (also the way to retry a failed push)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    api = api or HfApi(token=token)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.create_commit(repo_id, operations=operations, commit_message=commit_message, create_pr=create_pr)
    except Exception as err:
        raise RuntimeError(
            f"Uploading to {repo_id} failed ({type(err).__name__}: {err}). Everything is saved in {folder}; retry with "
            f"hf_layerif.hub.push_folder_to_hub({str(folder)!r}, {repo_id!r})."
        ) from err


def load_allocation(repo_id_or_path: str | os.PathLike, revision: str | None = None, api=None) -> Allocation:
    """Read ``layerif_allocation.json`` from a local folder/file or a Hub repo (JSON only; nothing executed)."""
    if api is not None and not Path(repo_id_or_path).exists():
        return Allocation.from_pretrained(api.hf_hub_download(repo_id=str(repo_id_or_path), filename=ALLOCATION_FILE,
                                                              revision=revision))
    return Allocation.from_pretrained(repo_id_or_path, revision=revision)
