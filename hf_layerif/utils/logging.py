"""The package's loggers follow ``transformers.utils.logging`` verbosity, so users control them the usual way.

All loggers live under ``hf_layerif``. That root logger has one handler writing to the current ``sys.stderr``
(through ``tqdm.write``, so records never break a progress bar) with a filter that passes a record only when its
level reaches transformers' verbosity at that moment
(``transformers.logging.set_verbosity_info()``, ``TRANSFORMERS_VERBOSITY=info``, ...), so the two libraries
are always equally verbose. Records do not propagate to the Python root logger (no duplicates).
"""

from __future__ import annotations

import logging
import sys

from transformers.utils import logging as hf_logging

ROOT = "hf_layerif"


class _FollowTransformersVerbosity(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= hf_logging.get_verbosity()


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when the record is emitted, through
    ``tqdm.write``: a record logged while a progress bar runs is printed above the bar instead of breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging never raises
            self.handleError(record)


def _root_logger() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _CurrentStderrHandler) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s|%(name)s] %(message)s"))
        handler.addFilter(_FollowTransformersVerbosity())
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)  # the handler's filter decides what is shown
        root.propagate = False
    return root


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` under the ``hf_layerif`` root (verbosity: transformers')."""
    _root_logger()
    if name != ROOT and not name.startswith(ROOT + "."):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)
