"""Jinja templates of the model cards (installed as the package ``hf_layerif.model_cards``)."""
