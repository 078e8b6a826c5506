"""The LoRA-MoE layer (METHOD §8): stacked expert tensors, a float32 top-k router, sparse token dispatch.

Shapes for one adapter on a linear W ∈ R^{out×in} with E experts of rank r: ``layerif_A`` [E, in, r],
``layerif_B`` [E, r, out] (zeros at init), router ``layerif_router`` = ``nn.Linear(in, E, bias=False)`` in
float32 (absent when E = 1). Tokens are flattened to [N, in]; each goes to its top-k experts (k = min(top_k, E))
with renormalised gates. Three exact implementations of the same mixture (``LayerIFConfig.dispatch``, saved with the
adapter):

- ``"sparse"``: tokens are sorted by expert and each expert multiplies only its own tokens (k/E of the expert
  FLOPs, but gathers, scatters and one host sync per layer);
- ``"gated"``: two grouped GEMMs over the concatenated experts, h = x [A_1 … A_E] (N × E·r) scaled by the top-k
  gates (zero for unselected experts, so they get zero gradient) and y = h [B_1; …; B_E]: E/k times the sparse
  FLOPs, no gather and no host sync;
- ``"dense"``: an einsum over all experts, the reference the tests compare against.

``"auto"`` (default) takes ``"gated"`` while the experts' FLOPs E·r·(in + out) do not exceed the base layer's
in·out (true for LoRA ranks on LLM projections: about 2% of it at Mistral-7B, E = 8, r = 8), else ``"sparse"``,
whose k/E share of the expert FLOPs then outweighs its gathers. ``benchmarks/moe_speed.py`` measures both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..utils.logging import get_logger

logger = get_logger(__name__)


@dataclass
class RoutingState:
    """One adapter's routing in one module at its last routed forward; tensors on the layer's device, never
    synchronised with the host.

    Attributes:
        aux: load-balancing loss (scalar, with gradient).
        z: router z-loss (scalar, with gradient), or None when disabled.
        counts: [E] weighted (token, slot) assignments per expert (real tokens only), detached.
    """

    aux: torch.Tensor
    z: torch.Tensor | None
    counts: torch.Tensor


@dataclass
class TokenContext:
    """State of the current model call shared by a :class:`~hf_layerif.tuners.model.LayerIFModel` and all its
    LayerIF layers: the attention mask [batch, seq] (1 real token, 0 padding), or None when the call gave none."""

    mask: torch.Tensor | None = None


class LayerIFLayer(BaseTunerLayer):
    """Mixin holding the per-adapter expert and router containers (PEFT's tuner-layer conventions)."""

    adapter_layer_names = ("layerif_A", "layerif_B", "layerif_router")
    other_param_names = ("r", "lora_alpha", "scaling", "num_experts", "top_k", "layerif_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.num_experts: dict[str, int] = {}
        self.top_k: dict[str, int] = {}
        self.layerif_dropout = nn.ModuleDict()
        self.layerif_A = nn.ParameterDict()
        self.layerif_B = nn.ParameterDict()
        self.layerif_router = nn.ModuleDict()
        self.dispatch: dict[str, str] = {}  # per adapter: "auto", "sparse", "gated" or "dense" (LayerIFConfig.dispatch)
        self.router_z_loss: dict[str, bool] = {}
        # the model's TokenContext (set by LayerIFModel when it injects or adopts the layer)
        self.token_context: TokenContext | None = None
        # per adapter: the routing of the last routed forward, and the expert load [E] summed over the training
        # steps since the load was last taken (:meth:`record_load`, :meth:`take_load`)
        self.router_state: dict[str, RoutingState] = {}
        self.router_load: dict[str, torch.Tensor] = {}
        self.kwargs = kwargs
        base = self.get_base_layer()
        if not (hasattr(base, "in_features") and hasattr(base, "out_features")):
            raise TypeError(f"LayerIF supports linear layers only, got {type(base).__name__}.")
        self.in_features = int(base.in_features)
        self.out_features = int(base.out_features)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, lora_dropout: float, num_experts: int,
                     top_k: int, router_init_std: float | None = None, router_z_loss: bool = False,
                     dispatch: str = "auto", inference_mode: bool = False) -> None:
        if top_k > num_experts and num_experts > 1:
            logger.warning("top_k=%d exceeds the %d experts of a module; using top_k=%d there.", top_k, num_experts, num_experts)
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.num_experts[adapter_name] = num_experts
        self.router_z_loss[adapter_name] = router_z_loss
        self.dispatch[adapter_name] = dispatch
        self.top_k[adapter_name] = min(top_k, num_experts)
        self.layerif_dropout[adapter_name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.layerif_A[adapter_name] = nn.Parameter(torch.empty(num_experts, self.in_features, r))
        self.layerif_B[adapter_name] = nn.Parameter(torch.zeros(num_experts, r, self.out_features))
        if num_experts > 1:
            router = nn.Linear(self.in_features, num_experts, bias=False, dtype=torch.float32)
            if router_init_std is not None:
                nn.init.normal_(router.weight, std=router_init_std)
            self.layerif_router[adapter_name] = router
        self.reset_expert_parameters(adapter_name)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        if adapter_name in self.layerif_router:  # routers stay float32 whatever the base dtype
            self.layerif_router[adapter_name].float()
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_expert_parameters(self, adapter_name: str) -> None:
        """A_e as PEFT's LoRA A (Kaiming-uniform, a = √5, on the [r, in] matrix), B_e = 0."""
        A = self.layerif_A[adapter_name]
        with torch.no_grad():
            for e in range(A.shape[0]):
                weight = torch.empty(A.shape[2], A.shape[1], dtype=torch.float32)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                A[e].copy_(weight.T.to(A.dtype))
            self.layerif_B[adapter_name].zero_()

    # --- merging is not defined for a routed mixture ------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(
            "A LayerIF LoRA-MoE adapter cannot be merged into the base weights: its update depends on each token's "
            "routing. Keep the adapter (PeftModel / hf_layerif.load_model) for inference."
        )

    def unmerge(self) -> None:
        return None

    # --- routing ------------------------------------------------------------------------------------------
    def record_load(self) -> None:
        """Add the last forward's expert counts to the load summed since it was last taken (a training step)."""
        for adapter, state in self.router_state.items():
            previous = self.router_load.get(adapter)
            self.router_load[adapter] = state.counts.float() if previous is None else previous + state.counts.float()

    def take_load(self, adapter: str) -> torch.Tensor | None:
        """The expert load [E] summed since the last call (None when no training step was recorded), reset."""
        return self.router_load.pop(adapter, None)

    def route(self, adapter_name: str, x_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top-k expert indices [N, k], renormalised gates [N, k] float32, probabilities [N, E], logits [N, E])."""
        router = self.layerif_router[adapter_name]
        logits = router(x_flat.to(router.weight.dtype))
        probs = torch.softmax(logits, dim=-1)
        top_p, top_i = probs.topk(self.top_k[adapter_name], dim=-1)
        gates = top_p / top_p.sum(dim=-1, keepdim=True)
        return top_i, gates, probs, logits

    @staticmethod
    def load_balancing_loss(top_i: torch.Tensor, probs: torch.Tensor, num_experts: int,
                            counts: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Switch/ST-MoE: E · Σ_e f_e P_e (f_e: share of (token, slot) assignments, P_e: mean probability).

        ``weights`` [N] (1 for real tokens, 0 for padding) restricts both means to real tokens; ``counts`` [E]
        are the (weighted) assignment counts when already computed.
        """
        if counts is None:
            counts = expert_counts(top_i, num_experts, weights)
        if weights is None:
            return num_experts * (counts.to(probs.dtype) / top_i.numel() * probs.mean(dim=0)).sum()
        w = weights.to(probs.dtype)
        real = w.sum().clamp_min(1.0)
        f = counts.to(probs.dtype) / (real * top_i.shape[1])
        return num_experts * (f * (probs * w[:, None]).sum(0) / real).sum()

    def token_weights_for(self, num_tokens: int, device) -> torch.Tensor | None:
        """[N] float weights (1 real token, 0 padding) from the attention mask of the current model call, if it
        matches this layer's N flattened tokens (shared by :class:`~hf_layerif.tuners.model.LayerIFModel`; no
        host synchronisation)."""
        mask = self.token_context.mask if self.token_context is not None else None
        if mask is None or mask.numel() != num_tokens:
            return None
        return mask.reshape(-1).to(device=device, dtype=torch.float32)

    def resolve_dispatch(self, adapter_name: str) -> str:
        chosen = self.dispatch.get(adapter_name, "auto")
        if chosen != "auto":
            return chosen
        E, r = self.num_experts[adapter_name], self.r[adapter_name]
        expert_flops = E * r * (self.in_features + self.out_features)
        return "gated" if expert_flops <= self.in_features * self.out_features else "sparse"

    @staticmethod
    def _experts_gated(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, top_i: torch.Tensor,
                       gates: torch.Tensor) -> torch.Tensor:
        E, d_in, r = A.shape
        combine = torch.zeros(x.shape[0], E, dtype=x.dtype, device=x.device).scatter(1, top_i, gates.to(x.dtype))
        h = x @ A.permute(1, 0, 2).reshape(d_in, E * r)
        h = (h.view(-1, E, r) * combine.unsqueeze(-1)).view(-1, E * r)
        return h @ B.reshape(E * r, B.shape[2])

    def _experts_sparse(self, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, top_i: torch.Tensor,
                        gates: torch.Tensor) -> torch.Tensor:
        N, k = top_i.shape
        out = x.new_zeros(N, B.shape[2])
        flat_expert = top_i.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)
        token = torch.arange(N, device=x.device).repeat_interleave(k)[order]
        gate = gates.reshape(-1)[order].to(x.dtype)
        counts = torch.bincount(flat_expert, minlength=A.shape[0]).tolist()
        start = 0
        for e, count in enumerate(counts):
            if count:
                idx = token[start:start + count]
                y = (x[idx] @ A[e]) @ B[e]
                out.index_add_(0, idx, y * gate[start:start + count, None])
            start += count
        return out

    @staticmethod
    def _experts_dense(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, top_i: torch.Tensor,
                       gates: torch.Tensor) -> torch.Tensor:
        combine = torch.zeros(x.shape[0], A.shape[0], dtype=x.dtype, device=x.device)
        combine.scatter_add_(1, top_i, gates.to(x.dtype))
        per_expert = torch.einsum("ni,eir,ero->neo", x, A, B)
        return torch.einsum("ne,neo->no", combine, per_expert)


def expert_counts(top_i: torch.Tensor, num_experts: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Assignments per expert [E] (float32) of top-k indices [N, k], each token weighted by ``weights`` [N]."""
    w = torch.ones(top_i.shape, dtype=torch.float32, device=top_i.device) if weights is None else \
        weights.to(torch.float32)[:, None].expand(top_i.shape)
    return torch.zeros(num_experts, dtype=torch.float32, device=top_i.device).scatter_add_(0, top_i.reshape(-1), w.reshape(-1))


class Linear(nn.Module, LayerIFLayer):
    """A linear layer (``nn.Linear`` or a quantized linear with ``in_features`` / ``out_features``) + LoRA-MoE."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, r: int, lora_alpha: int, lora_dropout: float,
                 num_experts: int, top_k: int, router_init_std: float | None = None, router_z_loss: bool = False,
                 dispatch: str = "auto", **kwargs) -> None:
        super().__init__()
        LayerIFLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, num_experts, top_k, router_init_std, router_z_loss,
                          dispatch)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        result_dtype = result.dtype
        for adapter in self.active_adapters:
            if adapter not in self.layerif_A:
                continue
            A, B = self.layerif_A[adapter], self.layerif_B[adapter]
            x_flat = x.reshape(-1, self.in_features)
            h = self.layerif_dropout[adapter](x_flat).to(A.dtype)
            if self.num_experts[adapter] == 1:
                delta = (h @ A[0]) @ B[0]
            else:
                top_i, gates, probs, logits = self.route(adapter, x_flat)
                experts = {"gated": self._experts_gated, "sparse": self._experts_sparse,
                           "dense": self._experts_dense}[self.resolve_dispatch(adapter)]
                delta = experts(h, A, B, top_i, gates)
                # routing statistics over real tokens only (the model's attention mask, when the tuner shares it),
                # as weighted sums: no data-dependent shapes, no host synchronisation
                weights = self.token_weights_for(x_flat.shape[0], x_flat.device)
                E = self.num_experts[adapter]
                counts = expert_counts(top_i, E, weights)
                z = None
                if self.router_z_loss[adapter]:
                    lse2 = torch.logsumexp(logits, dim=-1).pow(2)
                    z = lse2.mean() if weights is None else (lse2 * weights).sum() / weights.sum().clamp_min(1.0)
                self.router_state[adapter] = RoutingState(self.load_balancing_loss(top_i, probs, E, counts, weights), z,
                                                          counts.detach())
            delta = delta * self.scaling[adapter]
            result = result + delta.reshape(*x.shape[:-1], self.out_features).to(result_dtype)
        return result

    def __repr__(self) -> str:
        return "layerif." + super().__repr__()
