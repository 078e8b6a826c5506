"""Package layout only (metadata and dependencies are in setup.cfg).

The model-card templates live in the top-level ``model_cards/`` folder; a top-level folder is not part of a wheel
by default, so it is mapped into the wheel as the package ``hf_layerif.model_cards``.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["hf_layerif", "hf_layerif.*"]) + ["hf_layerif.model_cards"],
    package_dir={"hf_layerif.model_cards": "model_cards"},
    package_data={"hf_layerif": ["py.typed", "schemas/*.json"], "hf_layerif.model_cards": ["*.md.j2"]},
)
