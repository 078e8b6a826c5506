"""Datasets for influence runs: tokenization, validation of label tokens, collation, file/Hub loading."""

from .collator import InfluenceCollator
from .preparation import prepare_examples, validate_examples

__all__ = ["InfluenceCollator", "prepare_examples", "validate_examples"]
