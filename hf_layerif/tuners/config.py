"""``LayerIFConfig``: a LoRA mixture of experts whose number of experts differs per Transformer block (METHOD §8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from peft.config import PeftConfig

from ..utils.logging import get_logger
from .peft_type import ensure_peft_type

DISPATCHES = ("auto", "sparse", "gated", "dense")

logger = get_logger(__name__)


@dataclass
class LayerIFConfig(PeftConfig):
    """Configuration of a LayerIF LoRA-MoE adapter.

    Each targeted linear module W of block l gets E_l LoRA experts (A_e ∈ R^{r×in}, B_e ∈ R^{out×r}, B = 0 at
    init, scaling ``lora_alpha / r``) and, when E_l > 1, a float32 router W_g ∈ R^{E_l×in}: p = softmax(W_g x),
    the ``top_k`` largest p are kept and renormalised, y = W x + Σ_{e∈top-k} p̂_e B_e A_e x · scaling. E_l = 1 is
    plain LoRA (no router). Training adds ``router_aux_loss_coef`` × the mean Switch load-balancing loss over
    the routed modules (uniform routing scores 1) and optionally ``router_z_loss_coef`` × the router z-loss.

    Args:
        r: LoRA rank of every expert.
        lora_alpha: LoRA scaling numerator (scaling = lora_alpha / r).
        lora_dropout: dropout on the expert inputs (not on the router input).
        target_modules: module names or regex to adapt; ``"all-linear"`` (default) = every linear layer except
            the output head.
        exclude_modules: module names or regex not to adapt.
        layers_to_transform / layers_pattern: PEFT's usual restriction to some layer indices.
        experts_per_layer: number of experts of each Transformer block, indexed by block (e.g. from a LayerIF
            allocation). Its length must equal the model's number of blocks.
        experts_pattern: regex → number of experts overrides for module names (like LoRA's ``rank_pattern``);
            matched against the end of the module name.
        num_experts: experts for every block when ``experts_per_layer`` is not given, and for targeted modules
            outside the blocks.
        top_k: experts per token (clamped to E_l with a warning).
        router_aux_loss_coef / router_z_loss_coef: weights of the load-balancing and z losses.
        router_init_std: standard deviation of the router's normal initialisation (``None``: PyTorch's default
            ``nn.Linear`` initialisation).
        modules_to_save: extra modules trained and saved in full.
        bias: only ``"none"`` is supported.
        allocation: provenance of the allocation the expert counts came from (method, scores, model).
    """

    r: int = field(default=8, metadata={"help": "LoRA rank of every expert."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha; scaling = lora_alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the expert inputs."})
    target_modules: Optional[Union[list[str], str]] = field(default="all-linear", metadata={"help": "Modules to adapt (names, regex or 'all-linear')."})
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "Modules not to adapt."})
    layers_to_transform: Optional[Union[list[int], int]] = field(default=None, metadata={"help": "Only these layer indices."})
    layers_pattern: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "Name of the layer list for layers_to_transform."})
    experts_per_layer: Optional[list[int]] = field(default=None, metadata={"help": "Experts of each Transformer block, by block index."})
    experts_pattern: dict[str, int] = field(default_factory=dict, metadata={"help": "Regex -> experts overrides for module names."})
    num_experts: int = field(default=4, metadata={"help": "Experts per block when experts_per_layer is not given."})
    top_k: int = field(default=2, metadata={"help": "Experts per token."})
    router_aux_loss_coef: float = field(default=0.01, metadata={"help": "Weight of the load-balancing loss."})
    router_z_loss_coef: float = field(default=0.0, metadata={"help": "Weight of the router z-loss."})
    router_init_std: Optional[float] = field(default=None, metadata={"help": "Router init std (None: nn.Linear default)."})
    dispatch: str = field(default="auto", metadata={"help": "How routed tokens reach the experts: 'auto' (gated while "
                                                            "the experts' FLOPs stay below the base layer's, else "
                                                            "sparse), 'sparse', 'gated' or 'dense' (reference); all exact."})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "Extra modules trained and saved in full."})
    bias: str = field(default="none", metadata={"help": "Only 'none' is supported."})
    allocation: Optional[dict[str, Any]] = field(default=None, metadata={"help": "Provenance of the expert allocation."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = ensure_peft_type()
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.num_experts < 1 or self.top_k < 1:
            raise ValueError("num_experts and top_k must be >= 1.")
        if self.dispatch not in DISPATCHES:
            raise ValueError(f"dispatch={self.dispatch!r}; choose one of {DISPATCHES}.")
        if self.experts_per_layer is not None:
            self.experts_per_layer = [int(e) for e in self.experts_per_layer]
            bad = [i for i, e in enumerate(self.experts_per_layer) if e < 1]
            if bad or not self.experts_per_layer:
                raise ValueError(f"experts_per_layer must hold counts >= 1 (blocks {bad} do not).")
        for pattern, count in self.experts_pattern.items():
            if int(count) < 1:
                raise ValueError(f"experts_pattern[{pattern!r}] must be >= 1, got {count}.")
        if self.router_aux_loss_coef < 0 or self.router_z_loss_coef < 0:
            raise ValueError("router loss coefficients must be >= 0.")
        if self.bias != "none":
            raise ValueError("LayerIFConfig supports bias='none' only.")

    @classmethod
    def from_allocation(cls, allocation, **kwargs) -> LayerIFConfig:
        """A config with ``experts_per_layer`` from an expert :class:`~hf_layerif.allocation.Allocation`."""
        if getattr(allocation, "kind", None) != "experts":
            raise ValueError("from_allocation needs an expert allocation (kind='experts').")
        provenance = {"method": allocation.method, "hyperparameters": allocation.hyperparameters,
                      "model": {k: allocation.model.get(k) for k in ("architecture", "model_id", "revision", "num_blocks")},
                      "scores": allocation.scores, "created": allocation.created}
        kwargs.setdefault("allocation", provenance)
        return cls(experts_per_layer=list(allocation.values), **kwargs)
