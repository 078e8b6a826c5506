"""Logging through ``transformers.utils.logging`` so that users control verbosity the usual way."""

from __future__ import annotations

from transformers.utils import logging as hf_logging


def get_logger(name: str):
    """Return the ``transformers`` logger for ``name`` (respects ``TRANSFORMERS_VERBOSITY``)."""
    return hf_logging.get_logger(name)
