"""Per-sample gradients of tracked linear modules from one batched forward and backward pass.

For a linear module y = W x (+ b) applied to the tokens t of sample b, the gradient of sample b's loss with
respect to W is Σ_t δ_{b,t} x_{b,t}ᵀ, where δ is the gradient of the loss at the module's output. The
capture keeps x in an accelerate ``pre_forward`` hook and receives δ through a tensor hook registered in
``post_forward``; per-sample gradients are formed by one batched matmul per module as soon as δ arrives, so
activations are released during the backward pass. ``param.grad`` is never read or written (it is empty
under CPU offload and sharded under FSDP): the backward pass is driven by ``torch.autograd.grad`` with
respect to the input-embedding output.

Loss: each sample's mean token cross-entropy over its label tokens (labels = -100 ignored), exactly what
``model(**one_sample).loss`` gives at batch size 1 for a causal LM; the batched loss is the *sum* of the
per-sample losses, so each sample's gradient is its own. Padding tokens (attention mask 0) are masked out.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..models.blocks import TrackedModule
from .arguments import LOSS_REDUCTIONS
from .hooks import HookSet


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-sample loss, shape [B], float32 (or float64 for float64 logits), in nats.

    Causal LM (logits [B, T, V]): next-token cross-entropy over the label tokens (labels shifted by one), averaged
    over the sample's label tokens (``reduction="mean"``, what ``model(**one_sample).loss`` gives) or summed
    (``"sum"``: the sample's negative log-likelihood, so a longer sample weighs more).
    Classification (logits [B, C]): cross-entropy of the label (``reduction`` has no effect).
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if logits.dim() == 3:
        shift_logits = logits[:, :-1, :].to(dtype)
        shift_labels = labels[:, 1:].to(shift_logits.device)
        token_loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                                     ignore_index=-100, reduction="none").view(shift_labels.shape)
        if reduction == "sum":
            return token_loss.sum(dim=1)
        counts = (shift_labels != -100).sum(dim=1)
        return token_loss.sum(dim=1) / counts.clamp_min(1)
    if logits.dim() == 2:
        return F.cross_entropy(logits.to(dtype), labels.to(logits.device).view(-1), reduction="none")
    raise ValueError(f"unsupported logits shape {tuple(logits.shape)}: expected [B, T, V] or [B, C]")


class KroneckerProjector:
    """LoGra-style random projection of one linear module's gradient: P_out (Σ_t δ_t x_tᵀ) P_inᵀ.

    P_in ∈ R^{k_in × in'} and P_out ∈ R^{k_out × out} have i.i.d. N(0, 1/k) entries, so inner products of
    projected gradients equal those of the full gradients in expectation. A side whose size is ≤ k is left
    unprojected (exact). ``in'`` includes a constant-one column when the module has a bias.
    """

    def __init__(self, dim: int, seed: int):
        self.dim = dim
        self.seed = seed
        self._cache: dict[tuple, torch.Tensor] = {}

    def matrix(self, key: str, side: str, size: int, device, dtype) -> torch.Tensor | None:
        if size <= self.dim:
            return None
        cache_key = (key, side, str(device), dtype)
        if cache_key not in self._cache:
            # A per-module seed derived from the module's name: stable across processes and runs.
            digest = sum((i + 1) * ord(ch) for i, ch in enumerate(f"{key}/{side}")) % (2**31)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + digest)
            mat = torch.randn(self.dim, size, generator=gen, dtype=torch.float64) / self.dim**0.5
            self._cache[cache_key] = mat.to(device=device, dtype=dtype)
        return self._cache[cache_key]

    def output_size(self, module: TrackedModule) -> int:
        in_size = module.in_features + (1 if module.has_bias else 0)
        return min(module.out_features, self.dim) * min(in_size, self.dim)


class PerSampleGradientCapture:
    """Hooks on the tracked modules of a model; :meth:`compute` returns per-sample gradients per block.

    Use as a context manager: hooks are attached on enter and removed exactly on exit. While active, the
    model is in eval mode (no dropout), gradient checkpointing is off and the KV cache is not used; all
    three are restored on exit.

    Args:
        model: the model (``PreTrainedModel`` or ``PeftModel``), possibly dispatched or offloaded.
        tracked: per block, the tracked modules (from :func:`hf_layerif.models.blocks.tracked_modules`).
        dtype: dtype in which per-sample gradients are formed.
        projector: optional :class:`KroneckerProjector` (target ``full``).
        loss_reduction: how a sample's token losses make its loss (see :func:`per_sample_loss`).
    """

    def __init__(self, model: nn.Module, tracked: list[list[TrackedModule]], dtype: torch.dtype,
                 projector: KroneckerProjector | None = None, loss_reduction: str = "mean"):
        self.model = model
        self.tracked = tracked
        self.dtype = dtype
        self.projector = projector
        self.loss_reduction = loss_reduction
        self._hooks = HookSet()
        self._inputs: dict[str, list[torch.Tensor]] = {}
        self._grads: dict[str, torch.Tensor] = {}
        self._token_mask: torch.Tensor | None = None
        self._anchor: torch.Tensor | None = None
        self._active = False
        self._restore: list = []
        self._restore_ckpt: list[nn.Module] = []
        self._forward_kwargs: dict = {}

    # --- sizes ------------------------------------------------------------------------------------------
    def module_dim(self, module: TrackedModule) -> int:
        return self.projector.output_size(module) if self.projector is not None else module.numel

    def block_bounds(self, granularity: str) -> list[list[int]]:
        bounds = []
        for modules in self.tracked:
            offsets = [0]
            for module in modules:
                offsets.append(offsets[-1] + self.module_dim(module))
            bounds.append(offsets if granularity == "tensor" else [0, offsets[-1]])
        return bounds

    # --- hooks ------------------------------------------------------------------------------------------
    def __enter__(self) -> PerSampleGradientCapture:
        self._prepare_model()
        try:
            for modules in self.tracked:
                for module in modules:
                    self._hooks.add(module.module, self._make_input_hook(module), self._make_output_hook(module))
            embeddings = self.model.get_input_embeddings()
            if embeddings is None:
                raise ValueError("the model has no input embeddings (get_input_embeddings() is None)")
            self._hooks.add(embeddings, None, self._anchor_hook)
        except BaseException:
            self._hooks.remove()
            self._restore_model()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.remove()
        self._restore_model()
        self._inputs.clear()
        self._grads.clear()

    def _prepare_model(self) -> None:
        model = self.model
        self._restore = [(m, m.training) for m in model.modules()]
        checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
        self._restore_ckpt = checkpointed
        for m in checkpointed:
            m.gradient_checkpointing = False
        model.eval()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self._forward_kwargs = {"use_cache": False} if "use_cache" in params else {}

    def _restore_model(self) -> None:
        for module, training in self._restore:
            module.training = training
        for m in self._restore_ckpt:
            m.gradient_checkpointing = True
        self._restore = []
        self._restore_ckpt = []

    def _anchor_hook(self, output):
        if not self._active:
            return output
        tensor = output[0] if isinstance(output, tuple) else output
        if not tensor.requires_grad:
            tensor.requires_grad_(True)
        self._anchor = tensor
        return output

    def _make_input_hook(self, module: TrackedModule):
        key = module.name

        def on_input(x: torch.Tensor) -> None:
            if self._active:
                self._inputs.setdefault(key, []).append(x)

        return on_input

    def _make_output_hook(self, module: TrackedModule):
        def on_output(output):
            if self._active and isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: self._on_output_grad(module, grad))
            return output

        return on_output

    def _on_output_grad(self, module: TrackedModule, grad: torch.Tensor) -> None:
        x = self._inputs[module.name].pop()
        dtype = self.dtype
        delta = grad.to(dtype)
        x = x.to(device=delta.device, dtype=dtype)
        if delta.dim() == 2:
            delta, x = delta.unsqueeze(1), x.unsqueeze(1)
        elif delta.dim() > 3:
            delta, x = delta.flatten(1, -2), x.flatten(1, -2)
        mask = self._token_mask
        if mask is not None and mask.shape[1] == x.shape[1]:
            x = x * mask.to(device=x.device, dtype=dtype).unsqueeze(-1)
        if module.has_bias:
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
        if self.projector is not None:
            p_in = self.projector.matrix(module.name, "in", x.shape[-1], x.device, dtype)
            p_out = self.projector.matrix(module.name, "out", delta.shape[-1], x.device, dtype)
            if p_in is not None:
                x = x @ p_in.T
            if p_out is not None:
                delta = delta @ p_out.T
            flat = torch.bmm(delta.transpose(1, 2), x).flatten(1)
        elif module.layout == "out_in":
            g = torch.bmm(delta.transpose(1, 2), x)  # [B, out, in(+1)]
            if module.has_bias:
                flat = torch.cat([g[..., :-1].flatten(1), g[..., -1]], dim=1)
            else:
                flat = g.flatten(1)
        else:  # Conv1D: weight [in, out]
            g = torch.bmm(x.transpose(1, 2), delta)  # [B, in(+1), out]
            if module.has_bias:
                flat = torch.cat([g[:, :-1, :].flatten(1), g[:, -1, :]], dim=1)
            else:
                flat = g.flatten(1)
        previous = self._grads.get(module.name)
        self._grads[module.name] = flat if previous is None else previous + flat

    # --- one batch ----------------------------------------------------------------------------------------
    def compute(self, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-sample gradients for one batch.

        Args:
            batch: ``input_ids`` [B, T], optional ``attention_mask`` [B, T], ``labels`` [B, T] (-100 ignored;
                default: ``input_ids`` with padding ignored), and any further model inputs.
        Returns:
            (one [B, d_l] tensor per block in ``self.dtype`` on the device of the block's first module's
            gradient, per-sample losses [B] detached).
        """
        batch = dict(batch)
        labels = batch.pop("labels", None)
        if labels is None:
            labels = batch["input_ids"].clone()
            if "attention_mask" in batch:
                labels[batch["attention_mask"] == 0] = -100
        self._token_mask = batch.get("attention_mask")
        self._inputs.clear()
        self._grads.clear()
        self._anchor = None
        self._active = True
        try:
            with torch.enable_grad():
                outputs = self.model(**batch, **self._forward_kwargs)
                logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
                losses = per_sample_loss(logits, labels, self.loss_reduction)
                if self._anchor is None:
                    raise RuntimeError("the input-embedding hook did not fire; is the model fed input_ids?")
                torch.autograd.grad(losses.sum(), self._anchor)
        finally:
            self._active = False
            self._anchor = None
            self._inputs.clear()
        per_block = []
        batch_size = losses.shape[0]
        for modules in self.tracked:
            pieces = []
            for module in modules:
                g = self._grads.pop(module.name, None)
                if g is None:  # module not on the loss path (e.g. unused): its gradient is zero
                    g = torch.zeros(batch_size, self.module_dim(module), dtype=self.dtype, device=losses.device)
                pieces.append(g)
            device = pieces[0].device
            per_block.append(torch.cat([p.to(device) for p in pieces], dim=1))
        self._grads.clear()
        return per_block, losses.detach()


