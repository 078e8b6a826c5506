"""Sharing allocations, pruned models and LoRA-MoE adapters on the Hugging Face Hub, with model cards."""

from .cards import render_card
from .push import load_allocation, push_allocation_to_hub, push_folder_to_hub, write_hub_folder

__all__ = ["render_card", "push_allocation_to_hub", "push_folder_to_hub", "load_allocation", "write_hub_folder"]
