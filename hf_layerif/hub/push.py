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

from ..allocation.allocation import ALLOCATION_FILE, Allocation, plot_allocations
from ..data.loading import looks_local
from ..utils.io import display_name, is_local_path, normalize_permissions
from ..utils.logging import get_logger
from .artifacts import ARTIFACTS, HubArtifact, artifact_for
from .cards import eval_results_for

logger = get_logger(__name__)

PLOT_FILE = "layerif_allocation.png"
STAGING_MARKER = ".hf-layerif-staging"


def _default_local_dir(repo_id: str) -> Path:
    """A new staging folder under the system's temporary folder (removed after a successful upload, kept after a
    failed one so that it can be retried)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"hf-layerif-upload-{repo_id.replace('/', '--')}-"))


# the Hub datasets named by a calibration source (the pruning papers' default is C4's first shard)
CALIBRATION_HUB_IDS = {"c4": "allenai/c4"}


def _rows(allocation: Allocation) -> list[dict[str, str]]:
    scores = allocation.scores or [None] * allocation.num_blocks
    rows = []
    for name, value, score in zip(allocation.model["block_names"], allocation.values, scores):
        rows.append({"name": name, "value": str(value) if allocation.kind == "experts" else f"{value:.4f}",
                     "score": "-" if score is None else f"{score:.6g}"})
    return rows


def _datasets(allocation: Allocation, calibration_source: str | None = None) -> list[str] | None:
    """Hub dataset ids for the card's ``datasets:``: the scored training / validation data (when the scores
    recorded Hub ids) and a pruned model's calibration data (when it came from the Hub). Local files are not
    listed: they are no dataset ids."""
    data = (allocation.provenance.get("scores") or {}).get("data") or {}
    names = [data.get(k) for k in ("train_name", "validation_name")]
    source = calibration_source
    if isinstance(source, str):
        source = CALIBRATION_HUB_IDS.get(source, source.partition(":")[0])
        if source.count("/") == 1 and " " not in source and not is_local_path(source) and not looks_local(source):
            names.append(source)
    unique = list(dict.fromkeys(n for n in names if n))
    return unique or None


def _check_allocation(allocation) -> None:
    if not isinstance(allocation, Allocation):
        raise TypeError(
            f"allocation must be an hf_layerif Allocation, not {type(allocation).__name__}. Build one with "
            "hf_layerif.expert_allocation(scores, total_experts) / hf_layerif.sparsity_allocation(scores, sparsity), "
            "Allocation.from_values(values, kind, model) for a plain list, or load one with "
            "hf_layerif.load_allocation(path_or_repo_id)."
        )


def _refuse_mixed_artifacts(local: Path, artifact: HubArtifact) -> None:
    """Raise when ``local`` holds the files of another kind of artifact than ``artifact`` (a folder never mixes
    two)."""
    for other in ARTIFACTS:
        found = [name for name in other.files if (local / name).exists()]
        if other.kind != artifact.kind and found:
            what = "an allocation" if not artifact.files else "a " + artifact.kind.replace("_", "-")
            raise ValueError(f"{local} already holds a staged {other.kind.replace('_', '-')} ({', '.join(found)}); "
                             f"staging {what} there would mix the two. Pass clean=True to empty a folder hf-layerif "
                             "staged, or use another folder.")


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
    _check_allocation(allocation)
    artifact = artifact_for(model)
    artifact.check(allocation)
    local = Path(local_dir)
    if clean:
        _prepare_staging_dir(local)
    else:
        _refuse_mixed_artifacts(local, artifact)
    own = _source_card_metadata(model)  # a local source model's own card: its base_model and license
    license = license or own.get("license")
    base_model = base_model or own.get("base_model")
    local.mkdir(parents=True, exist_ok=True)
    artifact.stage(local)
    allocation.save_pretrained(local)
    plot_allocations([allocation], local / PLOT_FILE, labels=[allocation.method])
    model_id = allocation.model.get("model_id") or ""
    hub_base = base_model or (model_id if "/" in model_id and not is_local_path(model_id)
                              and not model_id.startswith("local:") else None)
    # titles and code never show a local absolute path: a local base model is named by its folder name
    base_model = hub_base or (display_name(model_id) if model_id else None) or allocation.model.get("architecture") or "unknown"
    load_target = repo_id or f"./{local.name}"
    model_name = (repo_id or local.name).split("/")[-1]
    common = dict(repo_id=load_target, base_model=base_model, library_version=allocation.library_version,
                  plot_file=PLOT_FILE, rows=_rows(allocation))
    metadata = dict(base_model=hub_base, datasets=_datasets(allocation, artifact.calibration_source()),
                    license=license, pipeline_tag=artifact.pipeline_tag())
    _warn_missing_metadata(metadata)
    eval_entries = eval_results_for(eval_results, model_name)
    eval_rows = [{"task": entry.dataset_name, "metric": entry.metric_type, "value": f"{entry.metric_value:.4f}"}
                 for entry in eval_entries or []]
    card = artifact.card(allocation, metadata, common, model_name, eval_entries, eval_rows)
    card.save(local / "README.md")  # replaces any generic card PEFT / transformers wrote
    normalize_permissions(local)
    return local, artifact.kind


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
    suffix = next(artifact.commit_suffix for artifact in ARTIFACTS if artifact.kind == kind)
    info = push_folder_to_hub(local, repo_id, api=api, private=private, create_pr=create_pr, token=token,
                              commit_message=commit_message
                              or f"Add LayerIF {allocation.kind} allocation ({allocation.method}){suffix}")
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
