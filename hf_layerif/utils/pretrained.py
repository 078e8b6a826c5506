"""``save_pretrained`` / ``from_pretrained`` for objects stored as JSON files, from a local folder or a Hub repo.

Everything is JSON (or safetensors, read by the caller): nothing is unpickled, whatever the source.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from .io import read_json, write_json


def resolve_file(repo_id_or_path: str | os.PathLike, filename: str, revision: str | None = None) -> Path:
    """Where ``filename`` of ``repo_id_or_path`` is on this machine: inside a local folder, the local file itself,
    or downloaded from a Hub repo (``revision`` a branch, tag or commit; cached by ``huggingface_hub``).

    Raises:
        FileNotFoundError: a local folder without the file, or a local-looking path that does not exist.
    """
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        if not (path / filename).exists():
            raise FileNotFoundError(f"{path / filename} not found: pass the folder its save_pretrained() wrote.")
        return path / filename
    if path.is_file():
        return path
    name = str(repo_id_or_path)
    if name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or name.endswith(".json"):
        raise FileNotFoundError(f"{name}: no such local folder or file (a local path, so the Hub was not asked).")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=name, filename=filename, revision=revision))


class JsonPretrainedMixin(ABC):
    """``save_pretrained(folder)`` writes ``FILE_NAME`` (atomically) from :meth:`to_dict`; ``from_pretrained`` reads
    it from a folder, the file itself or a Hub repo and builds the object with :meth:`from_dict`. A subclass that
    lacks either cannot be instantiated."""

    FILE_NAME: ClassVar[str]

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe content of ``FILE_NAME``."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any], source: Path):
        """Build the object from the file's JSON; ``source`` is where it was read (for messages and neighbours)."""

    @classmethod
    def read_file(cls, path: Path) -> dict[str, Any]:
        """The file's JSON (subclasses check a format marker here)."""
        return read_json(path)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``FILE_NAME`` into ``save_directory`` (created if needed); returns the file's path."""
        path = Path(save_directory) / self.FILE_NAME
        write_json(path, self.to_dict())
        return path

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | os.PathLike, revision: str | None = None):
        """Read what :meth:`save_pretrained` wrote: a local folder, the file itself, or a Hub repo id."""
        path = resolve_file(repo_id_or_path, cls.FILE_NAME, revision)
        return cls.from_dict(cls.read_file(path), path)


__all__ = ["JsonPretrainedMixin", "resolve_file"]
