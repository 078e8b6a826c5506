"""Atomic writes of JSON and safetensors files.

Every file the package writes goes through these helpers: the content is written to a temporary file in the
destination folder, flushed to disk and renamed over the destination, so a crash never leaves a half-written
result. Nothing is ever pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The result gets the permissions a plain ``open()`` would give (``mkstemp`` creates 0600 files, which nobody
    else on a shared cluster could read).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, _default_file_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def normalize_permissions(folder: str | os.PathLike) -> None:
    """Give every ``*.safetensors`` file under ``folder`` that only its owner can read the mode a plain ``open()``
    would have given.

    safetensors 0.8 writes its files with mode 0600 (whatever the umask), and so do ``save_pretrained`` of
    transformers and PEFT through it; run after them so others on a shared cluster can load the result.
    """
    mode = _default_file_mode()
    for path in Path(folder).rglob("*.safetensors"):
        if path.is_file() and not path.is_symlink() and (path.stat().st_mode & 0o777) == 0o600 and mode != 0o600:
            os.chmod(path, mode)


def is_local_path(name: str) -> bool:
    """Whether ``name`` (a model id, a data source) is a path on this machine rather than a Hub id."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).exists()


def display_name(name: str) -> str:
    """``name`` as cards and plots may show it: a local path becomes its last component (never the machine's
    folders); a Hub id stays as it is."""
    return Path(name.rstrip("/")).name if is_local_path(name) else name


def portable_source(name: str | None) -> str | None:
    """``name`` as files that leave the machine record it: a Hub id or bare name as is, a local path as
    ``local:<folder or file name>`` (never the machine's folders)."""
    if not name or not isinstance(name, str):
        return name
    return f"local:{Path(name.rstrip('/')).name}" if is_local_path(name) else name


def remove_files_and_folder(folder: str | os.PathLike | None, names) -> None:
    """Delete the files ``names`` inside ``folder`` (missing ones are fine), then the folder if it is empty."""
    if folder is None:
        return
    folder = Path(folder)
    for name in names:
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # not empty (another process's files, a user's file) or already gone
        pass


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as UTF-8 JSON with sorted keys, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
            handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors (made contiguous and moved to CPU) as safetensors, atomically."""
    from safetensors.torch import save_file

    cpu = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def read_versioned_json(path: str | os.PathLike, expected_format: str, version: str, what: str) -> dict:
    """Read a JSON file written by this package and check its ``format`` and major ``format_version``.

    Raises ``FileNotFoundError`` / ``ValueError`` that say what to pass or to upgrade.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pass the folder written by {what}.save_pretrained().")
    data = read_json(path)
    if data.get("format") != expected_format:
        raise ValueError(f"{path} is not an {expected_format} file (format={data.get('format')!r}).")
    major = str(data.get("format_version", "")).split(".")[0]
    if major != version.split(".")[0]:
        raise ValueError(f"{path} has format_version {data.get('format_version')!r}; this hf-layerif reads "
                         f"{version.split('.')[0]}.x. Upgrade hf-layerif.")
    return data


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (temporary file + rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path
