"""Importing any public name in any order registers the LAYERIF PEFT type once and warns about nothing of ours."""

import subprocess
import sys

import pytest

ORDERS = [
    "from hf_layerif import LayerIFConfig",
    "import hf_layerif.tuners",
    "from hf_layerif.tuners.config import LayerIFConfig",
    "import transformers; from hf_layerif import LayerIFConfig",
    "import peft; from hf_layerif import LayerIFConfig",
    "import hf_layerif; import peft",
    "import hf_layerif; from transformers import AutoModelForCausalLM",
    "from hf_layerif import LayerInfluenceTrainer, compute_layer_influence",
]


@pytest.mark.slow
@pytest.mark.parametrize("statement", ORDERS)
def test_every_import_order_registers_without_a_warning(statement):
    check = ("import peft.mapping, peft.utils; "
             "assert peft.utils.PeftType.LAYERIF in peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING; print('registered')")
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", f"{statement}; {check}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "registered" in out.stdout
    assert "hf-layerif could not register" not in out.stderr
