"""Feed a calibration set through the Transformer blocks one block at a time.

Block 0's inputs are captured by stopping the forward at block 0 (every positional and keyword argument it
is called with: hidden states, attention mask, position ids, position embeddings, cache flags). Each block
then runs on the stored inputs; its outputs become the next block's inputs. A caller can inspect or modify a
block (collect input statistics, prune it) between running it for statistics and running it for the next
block's inputs, so pruning decisions of block l see the outputs of the already pruned blocks < l.

Memory: the calibration activations of one block (nsamples × seqlen × hidden values, kept on
``activation_device`` in ``activation_dtype``) plus one block's weights; works with ``device_map`` dispatch
and CPU offload (each block's own accelerate hooks move weights and inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.blocks import TransformerBlocks, base_linears, find_transformer_blocks
from ..models.offload import execution_device, input_device


class _StopForward(Exception):
    pass


def _to(value, device, dtype=None):
    if isinstance(value, torch.Tensor):
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device, dtype) for v in value)
    if isinstance(value, list):
        return [_to(v, device, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device, dtype) for k, v in value.items()}
    return value


class InputStatistics:
    """Hooks on the linear modules of one block accumulating, over calibration tokens, Σ_t x_t² per input
    column (for ‖X_j‖₂, Wanda / OWL) and optionally Σ_t x_t x_tᵀ (SparseGPT's H), in float32 (float64 with
    ``dtype``).

    Modules that read the same input tensor (q/k/v after the attention norm, gate/up after the MLP norm) share
    one accumulator: the statistics are formed once per input, not once per module (``grams[name]`` of such
    modules is the same tensor; SparseGPT clones it before use).
    """

    def __init__(self, block: nn.Module, gram: bool = False, dtype: torch.dtype = torch.float32):
        self.gram = gram
        self.dtype = dtype
        self._sq: dict[str, torch.Tensor] = {}
        self._grams: dict[str, torch.Tensor] = {}
        self._tokens: dict[str, int] = {}
        self.group_of: dict[str, str] = {}  # module name -> the first module that read the same input
        self.modules: dict[str, nn.Module] = {}
        self._last_input: tuple[torch.Tensor, int, str] | None = None
        self._handles = []
        for name, module in base_linears(block):
            self.modules[name] = module
            self._handles.append(module.register_forward_pre_hook(self._make_hook(name)))

    def _make_hook(self, name: str):
        def hook(module, args):
            inp = args[0]
            last = self._last_input
            if last is not None and last[0] is inp and last[1] == inp._version:
                self.group_of.setdefault(name, last[2])  # same tensor as the module just before: shared
                return
            group = self.group_of.setdefault(name, name)
            x = inp.detach().reshape(-1, inp.shape[-1]).to(self.dtype)
            sq = (x * x).sum(0)
            self._sq[group] = sq if group not in self._sq else self._sq[group] + sq
            self._tokens[group] = self._tokens.get(group, 0) + x.shape[0]
            if self.gram:
                g = x.T @ x
                self._grams[group] = g if group not in self._grams else self._grams[group] + g
            self._last_input = (inp, inp._version, group)

        return hook

    @property
    def sq_norms(self) -> dict[str, torch.Tensor]:
        return {name: self._sq[group] for name, group in self.group_of.items()}

    @property
    def grams(self) -> dict[str, torch.Tensor]:
        return {name: self._grams[group] for name, group in self.group_of.items() if group in self._grams}

    @property
    def tokens(self) -> dict[str, int]:
        return {name: self._tokens[group] for name, group in self.group_of.items()}

    def column_norms(self, name: str) -> torch.Tensor:
        """‖X_j‖₂ over all calibration tokens for each input column j of module ``name``."""
        return self._sq[self.group_of[name]].sqrt()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._last_input = None

    def __enter__(self) -> InputStatistics:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class BlockSequentialRunner:
    """Runs calibration batches through ``model``'s blocks one block at a time.

    Args:
        model: the model (dispatched / offloaded models are fine).
        calibration_ids: [nsamples, seqlen] token ids.
        batch_size: sequences per forward.
        activation_device / activation_dtype: where stored block inputs live (default: the device and dtype
            they arrive with); ``"cpu"`` and ``torch.bfloat16`` bound memory for large models.
    """

    def __init__(self, model: nn.Module, calibration_ids: torch.Tensor, batch_size: int = 1,
                 activation_device: str | torch.device | None = None, activation_dtype: torch.dtype | None = None,
                 blocks: TransformerBlocks | None = None, block_pattern: str | None = None, progress: bool = True):
        if calibration_ids.dim() != 2 or calibration_ids.numel() == 0:
            raise ValueError("calibration_ids must be a non-empty [nsamples, seqlen] tensor")
        self.model = model
        self.ids = calibration_ids
        self.batch_size = batch_size
        self.activation_device = activation_device
        self.activation_dtype = activation_dtype
        self.blocks = blocks or find_transformer_blocks(model, block_pattern)
        self.progress = progress
        self.returns_tuple = False  # whether the blocks return a tuple (hidden states first); set by forward_block

    def _input_device(self) -> torch.device:
        return input_device(self.model)

    @staticmethod
    def _block_placement(block: nn.Module) -> tuple[torch.device, torch.dtype]:
        device = execution_device(block)
        param = next((p for p in block.parameters() if p.is_floating_point()), None)
        dtype = param.dtype if param is not None else torch.float32
        if device is None:
            device = param.device if param is not None and param.device.type != "meta" else torch.device("cpu")
        return device, dtype

    def _call(self, block: nn.Module, args: tuple, kwargs: dict):
        if self.activation_device is not None or self.activation_dtype is not None:
            device, dtype = self._block_placement(block)
            args = (_to(args[0], device, dtype),) + tuple(_to(a, device) for a in args[1:])
            kwargs = {k: _to(v, device, dtype if k == "position_embeddings" else None) for k, v in kwargs.items()}
        return block(*args, **kwargs)

    @torch.no_grad()
    def capture_first_block_inputs(self) -> list[tuple[tuple, dict]]:
        """(args, kwargs) of every call of block 0, one per calibration batch."""
        captured: list[tuple[tuple, dict]] = []

        def catcher(module, args, kwargs):
            device = self.activation_device or args[0].device
            captured.append((_to(args, device, self.activation_dtype), _to(kwargs, device)))
            raise _StopForward

        handle = self.blocks.modules[0].register_forward_pre_hook(catcher, with_kwargs=True)
        device = self._input_device()
        try:
            for start in range(0, self.ids.shape[0], self.batch_size):
                batch = self.ids[start:start + self.batch_size].to(device)
                try:
                    self.model(input_ids=batch, use_cache=False)
                except _StopForward:
                    pass
        finally:
            handle.remove()
        return captured

    @torch.no_grad()
    def forward_block(self, block: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
        """Run ``block`` on stored inputs (one (args, kwargs) per batch) and return the next block's inputs: the
        block's hidden-state output in place of ``args[0]`` (on ``activation_device`` in ``activation_dtype``), the
        other arguments unchanged."""
        outputs = []
        for args, kwargs in inputs:
            out = self._call(block, args, kwargs)
            self.returns_tuple = isinstance(out, (tuple, list))
            hidden = out[0] if self.returns_tuple else out
            device = self.activation_device or hidden.device
            outputs.append(((_to(hidden, device, self.activation_dtype),) + tuple(args[1:]), kwargs))
        return outputs

    def run_block(self, block: nn.Module, inputs: list[tuple[tuple, dict]]) -> None:
        """Run ``block`` on stored inputs and discard the outputs (statistics hooks see the inputs)."""
        for args, kwargs in inputs:
            self._call(block, args, kwargs)

    @torch.no_grad()
    def run(self, visit: Callable[[int, nn.Module, Callable[[], None]], None] | None = None) -> list[tuple[tuple, dict]]:
        """For each block l: ``visit(l, block, forward)`` (``forward()`` runs the block on its calibration
        inputs, e.g. with :class:`InputStatistics` attached), then the block is run once more to produce the
        inputs of block l + 1. Returns the inputs of the final block's successor (the last hidden states)."""
        inputs = self.capture_first_block_inputs()
        was_training = self.model.training
        self.model.eval()
        try:
            for index, block in enumerate(tqdm(self.blocks.modules, desc="calibration blocks", disable=not self.progress)):
                if visit is not None:
                    visit(index, block, lambda block=block, inputs=inputs: self.run_block(block, inputs))
                inputs = self.forward_block(block, inputs)
        finally:
            self.model.train(was_training)
        return inputs
