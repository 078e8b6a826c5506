"""An exclusive lock on an output folder, so that two runs never write into the same one at once.

The lock is an OS advisory lock (``fcntl.flock``) on a small file inside the folder: it is released when the
holding process exits, however it exits, so a crashed run never leaves a stale lock behind; a run that finishes
removes the file. On systems without
``fcntl`` the lock is skipped with a debug message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .logging import get_logger

logger = get_logger(__name__)


class FolderLockedError(RuntimeError):
    """Another process is writing into the folder."""


@contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".hf-layerif.lock") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the duration of the ``with`` block.

    Raises:
        FolderLockedError: another process holds the lock; the message names its PID and the fix.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        logger.debug("fcntl is not available: %s is not locked.", folder)
        yield path
        return
    for _ in range(5):
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FolderLockedError(
                f"{folder} is in use by another hf-layerif run (process {holder}). Wait for it to finish, or write "
                "this run's results to another output folder."
            ) from None
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # a finishing run removed the file we locked: lock the new one
    else:  # pragma: no cover - five runs finishing in a row
        raise FolderLockedError(f"{folder}: could not take its lock; retry.")
    finished = False
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield path
        finished = True
    finally:
        if finished:  # a finished run leaves no lock file behind (a crashed one leaves an unlocked one)
            path.unlink(missing_ok=True)
        handle.close()  # closing the descriptor releases the lock
