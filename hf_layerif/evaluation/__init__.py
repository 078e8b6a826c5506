"""Evaluation the way the pruning and LoRA-MoE papers report it: perplexity and zero-shot accuracy."""

from .zero_shot import TASK_LOADERS, MultipleChoiceItem, evaluate_multiple_choice, load_task, zero_shot

__all__ = ["TASK_LOADERS", "MultipleChoiceItem", "evaluate_multiple_choice", "load_task", "zero_shot"]
