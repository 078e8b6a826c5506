"""The built wheel ships the model-card templates (a top-level folder) and the JSON schema."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
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


@pytest.mark.slow
def test_installed_wheel_renders_cards_outside_the_checkout(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                             "-w", str(tmp_path / "dist"), "-q"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("hf_layerif-*.whl"))
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel), "-q"],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import hf_layerif, sys; from hf_layerif.hub.cards import template_text; "
            "from hf_layerif.allocation.allocation import allocation_schema; "
            f"assert hf_layerif.__file__.startswith({str(target)!r}), hf_layerif.__file__; "
            "assert 'LayerIF' in template_text('lora_moe') and allocation_schema()['title']; print('ok')")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    import os

    env.update({k: v for k, v in os.environ.items() if k.startswith(("PYENV", "LD_"))})
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
