"""The built wheel ships the model-card templates (a top-level folder) and the JSON schema."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_templates_and_schema(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                             "-w", str(tmp_path), "-q"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    wheel = next(tmp_path.glob("hf_layerif-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in ("allocation.md.j2", "pruned.md.j2", "lora_moe.md.j2"):
        assert f"hf_layerif/model_cards/{template}" in names
    assert "hf_layerif/schemas/layerif_allocation.schema.json" in names
    assert "hf_layerif/py.typed" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "model_cards/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hf-layerif = hf_layerif.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
