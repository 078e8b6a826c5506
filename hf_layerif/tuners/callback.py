"""Trainer integration of the router losses: accumulation scaling and logging of router statistics."""

from __future__ import annotations

from transformers import TrainerCallback


def find_layerif_model(model):
    """The ``LayerIFModel`` inside a PeftModel / wrapped model, or None."""
    from .model import LayerIFModel

    for module in (model, getattr(model, "base_model", None), getattr(model, "module", None)):
        if isinstance(module, LayerIFModel):
            return module
        inner = getattr(module, "base_model", None)
        if isinstance(inner, LayerIFModel):
            return inner
    return None


class LayerIFRouterCallback(TrainerCallback):
    """Add to a plain ``Trainer`` (``callbacks=[LayerIFRouterCallback()]``) training a LayerIF adapter.

    - at ``on_train_begin``: tells the model the gradient-accumulation steps, so that the router loss added to a
      task loss already normalised over the accumulated micro-batches is not over-weighted that many times;
    - at ``on_log``: adds the routing summary (``router/aux_loss``, ``router/entropy_mean``, ``router/entropy_min``,
      ``router/max_share``) to the logs, and each routed module's entropy and max share with ``per_module=True``.
    """

    def __init__(self, log_statistics: bool = True, per_module: bool = False) -> None:
        self.log_statistics = log_statistics
        self.per_module = per_module

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        tuner = find_layerif_model(model)
        if tuner is not None:
            tuner.set_gradient_accumulation_steps(args.gradient_accumulation_steps)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        tuner = find_layerif_model(model)
        if self.log_statistics and tuner is not None and logs is not None and "loss" in logs:
            logs.update(tuner.router_statistics(per_module=self.per_module))
