"""What makes an influence checkpoint reusable: a key over everything that changes the result.

Everything an influence run saves to resume lives here: the resume key, the accumulators' state
(:class:`ResumableAccumulator`), the validation pass and the training progress; the files are written atomically
through :mod:`hf_layerif.utils.io`.

A run that writes into an output folder checkpoints there; re-running *the same* call resumes. "The same" is
decided by :func:`resume_key`: the weights being scored (a fingerprint of every tracked parameter and of the
base model's parameters), the model id, the data, every influence argument, the blocks and the process count.
A checkpoint made with another key is refused, with the differing fields named, before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.fingerprint import fingerprint_parameters
from ..utils.io import read_json, read_safetensors, write_json, write_safetensors

CHECKPOINT_DIRNAME = "influence_checkpoint"
_VALIDATION_FILE, _VALIDATION_META = "validation_gradients.safetensors", "validation.json"
_LOSSES_FILE, _PROGRESS_FILE = "losses.safetensors", "progress.json"

# arguments that do not change the stored gradients and influence matrices: how often the state is saved, and the
# reporting phase (aggregation and bootstrap), applied afterwards to the stored matrix; changing them resumes
_NOT_IN_KEY = ("checkpoint_every", "aggregation", "fraction", "bootstrap_samples")


def fingerprint_examples(examples: Iterable) -> str:
    """sha256 (16 hex digits) of the token ids/labels of a list of examples, or a datasets fingerprint."""
    fp = getattr(examples, "_fingerprint", None)
    if fp:
        return str(fp)
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps({k: list(v) for k, v in sorted(example.items())}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def data_provenance(train: list, evals: list, train_source=None, eval_source=None,
                    dataset_names: dict[str, str] | None = None) -> dict:
    """What the scores record about their data (and what a checkpoint's key covers): fingerprints and counts of
    the prepared examples and, when known, the Hub dataset ids (``train_name`` / ``validation_name``: from
    ``dataset_names`` {"train": ..., "validation": ...}, else read from Hub-loaded ``datasets.Dataset`` sources)."""
    from ..data.loading import hub_dataset_id

    names = dict(dataset_names or {})
    info = {"train": fingerprint_examples(train), "validation": fingerprint_examples(evals),
            "num_train": len(train), "num_validation": len(evals)}
    for key, source, name_key in (("train", train_source, "train_name"), ("validation", eval_source, "validation_name")):
        name = names.get(key) or hub_dataset_id(source)
        if name:
            info[name_key] = name
    return info


def model_weights_fingerprint(model: nn.Module, tracked) -> dict[str, str]:
    """Fingerprints of the tracked parameters (the adapter, or the blocks' linears for ``target='full'``) and of
    every parameter of the model."""
    tracked_params = [(m.name + "." + pname, p) for modules in tracked for m in modules
                      for pname, p in m.module.named_parameters(recurse=False)]
    return {"tracked": fingerprint_parameters(tracked_params),
            "model": fingerprint_parameters(list(model.named_parameters()))}


def resume_key(args, data_fingerprint: dict, model_id: str, weights: dict[str, str], blocks: list[str],
               dims: list[int], processes: int) -> dict[str, Any]:
    """The JSON-safe key a checkpoint must match to be resumed."""
    arguments = {k: v for k, v in args.to_dict().items() if k not in _NOT_IN_KEY}
    key = {"arguments": arguments, "data": data_fingerprint, "model": model_id, "weights": weights,
           "blocks": blocks, "dims": dims, "processes": processes}
    return json.loads(json.dumps(key, default=str))


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for name in sorted(set(saved) | set(current)):
        a, b = saved.get(name), current.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{name}.")
        elif a != b:
            out.append(f"{prefix}{name}")
    return out


def saved_key(checkpoint_dir: Path) -> dict | None:
    """The key of the checkpoint in ``checkpoint_dir`` (``None`` when there is none)."""
    for name in ("gram_state.json", "stream_state.json", "validation.json"):
        path = checkpoint_dir / name
        if path.exists():
            meta = read_json(path)
            return meta.get("fingerprint", meta.get("key"))
    return None


def check_resumable(checkpoint_dir: Path, key: dict, num_train: int, batch_size: int, processes: int) -> int | None:
    """Compare the checkpoint in ``checkpoint_dir`` with ``key``.

    Returns the number of training steps already done (0 when only the validation pass was saved), or ``None``
    when there is no checkpoint. Raises ``ValueError`` naming the differing fields and how to resume or start
    over when the checkpoint belongs to another run.
    """
    saved = saved_key(checkpoint_dir)
    if saved is None:
        return None
    if saved != key:
        diff = _differences(saved, key)
        raise ValueError(
            f"{checkpoint_dir} holds a checkpoint of a different influence run (it differs in: "
            f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}). To resume it, re-run with the settings, "
            "data and adapter weights it was made with; to start over, delete that folder or choose another "
            "output folder."
        )
    progress = checkpoint_dir / "progress.json"
    steps = int(read_json(progress)["steps_done"]) if progress.exists() else 0
    total = math.ceil(num_train / (batch_size * processes))
    return min(steps, total)


class ResumableAccumulator(ABC):
    """Checkpointing shared by the accumulators of the training pass (``GramAccumulator``, ``StreamingStatistics``).

    A subclass sets ``STATE_TENSORS`` (its attribute names saved as the state), ``STATE_FILE`` / ``STATE_META`` and
    implements :meth:`close_for_save` (spill what is still in memory); it has ``n``, ``rows_done`` and
    ``gradients`` (its :class:`~hf_layerif.influence.gradient_store.GradientStore`). The saved state is the state
    tensors (safetensors) and a JSON file with the rows done, the spilled windows and the run's key, both written
    atomically.
    """

    STATE_TENSORS: tuple[str, ...] = ()
    STATE_FILE = ""
    STATE_META = ""

    def _set_inputs(self, layout, validation_gradients: list[torch.Tensor], num_samples: int,
                    compute_dtype: torch.dtype, memory_budget_bytes: int, spill_dir: str | os.PathLike | None,
                    store_dtype: torch.dtype | None, over_budget_hint: str = "") -> None:
        """The inputs every accumulator keeps (its constructor's first arguments) and its gradient store."""
        from .gradient_store import GradientStore

        self.layout = layout
        self.v = validation_gradients
        self.n = num_samples
        self.compute_dtype = compute_dtype
        self.gradients = GradientStore(len(layout.bounds), memory_budget_bytes, spill_dir, store_dtype or compute_dtype,
                                       over_budget_hint)

    @property
    def spill_dir(self) -> Path | None:
        """Folder of the spilled gradients and of the saved state (``None``: no checkpointing)."""
        return self.gradients.spill_dir

    @abstractmethod
    def close_for_save(self) -> None:
        """Spill what is still in memory, so the saved state and the spilled windows are complete."""

    def save_state(self, key: dict) -> None:
        """Spill what is in memory, then save the state tensors and the progress (atomically) for a resume."""
        self.close_for_save()
        write_safetensors(self.spill_dir / self.STATE_FILE, {name: getattr(self, name) for name in self.STATE_TENSORS})
        write_json(self.spill_dir / self.STATE_META, {"rows_done": self.rows_done, "num_samples": self.n,
                                                      "spilled": self.gradients.spilled, "fingerprint": key})

    def try_resume(self, key: dict) -> int:
        """Load a saved state if it was saved under ``key`` for the same sample count; return the number of samples
        already done (0 when there is none to resume)."""
        meta_path = None if self.spill_dir is None else self.spill_dir / self.STATE_META
        if meta_path is None or not meta_path.exists():
            return 0
        meta = read_json(meta_path)
        if meta.get("fingerprint") != key or meta.get("num_samples") != self.n:
            return 0
        first = getattr(self, self.STATE_TENSORS[0])
        state = read_safetensors(self.spill_dir / self.STATE_FILE, device=str(first.device))
        if any(name not in state or state[name].shape != getattr(self, name).shape for name in self.STATE_TENSORS):
            return 0  # saved by a run that formed other statistics
        for name in self.STATE_TENSORS:
            getattr(self, name).copy_(state[name])
        self.rows_done = int(meta["rows_done"])
        self.gradients.spilled = list(meta["spilled"])
        return self.rows_done

    def cleanup(self) -> None:
        """Delete spilled gradients and the state (after the final result was written)."""
        from ..utils.io import remove_files_and_folder

        remove_files_and_folder(self.spill_dir, self.gradients.file_names() + [self.STATE_FILE, self.STATE_META])


def save_validation_gradients(spill_dir: Path, key: dict, v: list[torch.Tensor],
                              v_parts: list[torch.Tensor] | None = None) -> None:
    """Keep the validation pass (mean gradient per block, [d_l] each, and the validation parts' means, [P, d_l]
    each) under ``key``."""
    tensors = {f"block_{l}": t for l, t in enumerate(v)}
    if v_parts is not None:
        tensors.update({f"parts_block_{l}": t.contiguous() for l, t in enumerate(v_parts)})
    write_safetensors(spill_dir / _VALIDATION_FILE, tensors)
    write_json(spill_dir / _VALIDATION_META, {"key": key})


def load_validation_gradients(spill_dir: Path, key: dict, num_blocks: int
                              ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None] | None:
    """The validation pass saved under ``key`` as (v, v_parts), or None (none saved, or saved under another key)."""
    if not (spill_dir / _VALIDATION_META).exists() or read_json(spill_dir / _VALIDATION_META).get("key") != key:
        return None
    saved = read_safetensors(spill_dir / _VALIDATION_FILE)
    v_parts = [saved[f"parts_block_{l}"] for l in range(num_blocks)] if "parts_block_0" in saved else None
    return [saved[f"block_{l}"] for l in range(num_blocks)], v_parts


def save_training_progress(accumulator, key: dict, steps_done: int, losses: torch.Tensor) -> None:
    """Checkpoint the training pass: the accumulator's state, the losses so far [n] and the steps done."""
    accumulator.save_state(key)
    write_safetensors(accumulator.spill_dir / _LOSSES_FILE, {"losses": losses})
    write_json(accumulator.spill_dir / _PROGRESS_FILE, {"steps_done": steps_done})


def load_training_progress(spill_dir: Path) -> tuple[int, torch.Tensor]:
    """(steps done, losses [n]) of a training pass whose accumulator state was just resumed."""
    return int(read_json(spill_dir / _PROGRESS_FILE)["steps_done"]), read_safetensors(spill_dir / _LOSSES_FILE)["losses"]


def remove_checkpoint_files(accumulator) -> None:
    """Remove one process's checkpoint files (validation pass, progress, the accumulator's spilled gradients and
    state) after the final result was saved."""
    if accumulator is None or accumulator.spill_dir is None:
        return
    for name in (_VALIDATION_FILE, _VALIDATION_META, _LOSSES_FILE, _PROGRESS_FILE):
        (accumulator.spill_dir / name).unlink(missing_ok=True)
    accumulator.cleanup()
