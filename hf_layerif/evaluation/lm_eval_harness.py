"""Zero-shot accuracy through lm-evaluation-harness (optional extra ``eval``).

Built-in lm-eval tasks (``boolq``, ``rte``, ``hellaswag``, ``winogrande``, ``arc_easy``, ``arc_challenge``,
``openbookqa``) come from the Hub; local multiple-choice items (:class:`MultipleChoiceItem` with one context) are
written as a JSONL file with a YAML task next to it and run offline (``TaskManager(include_defaults=False)``).
The in-memory model is wrapped with ``HFLM(pretrained=model, tokenizer=tokenizer, add_bos_token=True)`` (the
contexts start with BOS, as in this package's own evaluator); ``bootstrap_iters=0`` skips the standard-error
bootstrap, which takes minutes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .zero_shot import MultipleChoiceItem

_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_local_task(name: str, items: list[MultipleChoiceItem], folder: str | Path) -> str:
    """Write ``items`` as an lm-eval task ``layerif_<name>`` in ``folder``; returns the task name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(isinstance(item.context, list) for item in items):
        raise ValueError(f"{name}: items with one context per choice (WinoGrande's partial scoring) need lm-eval's "
                         "built-in task; use tasks=['winogrande'] or hf_layerif.evaluation.evaluate_multiple_choice.")
    data = folder / f"{name}.jsonl"
    with open(data, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps({"context": item.context, "choices": item.choices, "gold": item.gold}) + "\n")
    task = f"layerif_{name}"
    (folder / f"{task}.yaml").write_text(_YAML.format(task=task, data=json.dumps(str(data))), encoding="utf-8")
    return task


def lm_eval_zero_shot(model, tokenizer, tasks: list[str] | None = None,
                      local_items: dict[str, list[MultipleChoiceItem]] | None = None, limit: int | None = None,
                      batch_size: int = 8) -> dict[str, dict[str, float]]:
    """``{task: {"acc", "acc_norm"}}`` from lm-eval for built-in ``tasks`` and/or ``local_items``."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError("lm-evaluation-harness is not installed: pip install 'hf-layerif[eval]'") from err
    names: dict[str, str] = {t: t for t in tasks or []}
    with tempfile.TemporaryDirectory(prefix="layerif-lm-eval-") as folder:
        for name, items in (local_items or {}).items():
            names[write_local_task(name, items, folder)] = name
        manager = TaskManager(include_path=folder, include_defaults=bool(tasks))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=True)
        output = simple_evaluate(model=lm, tasks=list(names), task_manager=manager, limit=limit, bootstrap_iters=0)
    results = {}
    for task, label in names.items():
        metrics = output["results"][task]
        results[label] = {"acc": float(metrics["acc,none"]), "acc_norm": float(metrics["acc_norm,none"])}
    return results
