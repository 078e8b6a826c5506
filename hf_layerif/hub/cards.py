"""Model cards from the Jinja templates shipped as ``hf_layerif.model_cards``, with typed Hub metadata.

Templates render with ``StrictUndefined``: a missing variable raises instead of leaving a blank. Metadata is a
``huggingface_hub.ModelCardData`` (``base_model``, ``datasets``, ``library_name``, ``tags``, and a
``model-index`` when evaluation results are given).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from ..influence.score_files import SIGN_CONVENTION

TEMPLATES = {"allocation": "allocation.md.j2", "pruned": "pruned.md.j2", "lora_moe": "lora_moe.md.j2"}
CITATION = """@article{askari2025layerif,
  title   = {LayerIF: Estimating Layer Quality for Large Language Models using Influence Functions},
  author  = {Askari, Hadi and Gupta, Shivanshu and Wang, Fei and Chhabra, Anshuman and Chen, Muhao},
  journal = {arXiv preprint arXiv:2505.23811},
  year    = {2025},
  url     = {https://arxiv.org/abs/2505.23811}
}"""
ARXIV_TAG = "arxiv:2505.23811"  # the paper: every card links it (the Hub lists the model under the paper)
PROJECT_LINK = "https://pypi.org/project/hf-layerif/"


def template_text(kind: str) -> str:
    if kind not in TEMPLATES:
        raise ValueError(f"unknown card kind {kind!r}; choose from {sorted(TEMPLATES)}")
    return resources.files("hf_layerif.model_cards").joinpath(TEMPLATES[kind]).read_text(encoding="utf-8")


def render_card(kind: str, card_data, **variables: Any):
    """A ``huggingface_hub.ModelCard``: YAML metadata from ``card_data`` and the rendered template body.

    ``sign_convention`` and ``citation`` are filled in; every other template variable must be given.
    """
    import jinja2
    from huggingface_hub import ModelCard

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    variables.setdefault("sign_convention", SIGN_CONVENTION)
    variables.setdefault("citation", CITATION)
    variables.setdefault("project_link", PROJECT_LINK)
    try:
        body = env.from_string(template_text(kind)).render(**variables)
    except jinja2.UndefinedError as err:
        raise ValueError(f"the {kind} model card needs a value for: {err.message}") from None
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def eval_results_for(eval_results: dict | None, model_name: str, dataset_names: dict[str, str] | None = None):
    """``EvalResult`` entries for a model-index from ``{task: {metric: value}}`` or ``{"wikitext2_ppl": x}``.

    A task's ``"subset"`` entry (e.g. ``"first 200 items"``, set when an evaluation was limited) is written into the
    dataset name, so a score on part of a task is never shown as the task's score."""
    from huggingface_hub import EvalResult

    if not eval_results:
        return None
    out = []
    for task, metrics in eval_results.items():
        if task == "average":
            continue
        if not isinstance(metrics, dict):
            metrics = {"perplexity" if "ppl" in task else "value": metrics}
            task = task.replace("_ppl", "")
        subset = metrics.get("subset")
        for metric, value in metrics.items():
            if metric == "n" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            dataset = (dataset_names or {}).get(task, task) + (f" ({subset})" if subset else "")
            out.append(EvalResult(task_type="text-generation" if metric == "perplexity" else "multiple-choice",
                                  dataset_type=dataset, dataset_name=dataset, metric_type=metric,
                                  metric_value=float(value)))
    return out or None
