"""The ``hf-layerif`` command line."""
