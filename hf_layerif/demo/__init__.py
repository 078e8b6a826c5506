"""The embedded default: a tiny Llama trained on a generated corpus of small algorithmic tasks."""

from .corpus import TASKS, make_task_samples
from .model import load_demo_model

__all__ = ["TASKS", "make_task_samples", "load_demo_model"]
