"""Offline mode: after the first failed connection to the Hub, every later Hub access of the process fails at once.

``HF_HUB_OFFLINE=1`` (read by huggingface_hub, transformers and datasets at import) skips the Hub from the start.
Without it, each Hub access that cannot connect waits for its own timeouts and retries (26 to 190 s were seen per
command). :func:`go_offline` switches huggingface_hub's, transformers' and datasets' offline flags on at run time,
so only the first failure waits; what is cached locally keeps working.
"""

from __future__ import annotations

import os
import sys

from .logging import get_logger

logger = get_logger(__name__)
_TRUE = ("1", "ON", "YES", "TRUE")
_state = {"offline": False}


def is_offline() -> bool:
    """Whether the Hub is skipped: ``HF_HUB_OFFLINE`` is set, or a connection already failed in this process."""
    return _state["offline"] or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def go_offline(reason: str) -> None:
    """Treat the Hub as unreachable from now on (said once), in huggingface_hub, transformers and datasets."""
    if not _state["offline"]:
        logger.warning("The Hugging Face Hub cannot be reached (%s): working offline from now on (cached files only). "
                       "Set HF_HUB_OFFLINE=1 to skip the Hub from the start.", reason[:200])
    _state["offline"] = True
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True


def is_connection_error(err: BaseException) -> bool:
    """A failure to reach the Hub (not a missing repo or file): connection, timeout or offline-mode errors."""
    names = {type(e).__name__ for e in _chain(err)}
    return bool(names & {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "OfflineModeIsEnabled",
                         "LocalEntryNotFoundError", "NewConnectionError", "MaxRetryError", "ConnectError"})


def _chain(err: BaseException | None):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


__all__ = ["go_offline", "is_connection_error", "is_offline"]
