"""The PeftType extension works on every Python version setup.cfg claims (3.10-3.12) and 3.13.

The enum helper is pure Python: each interpreter found on this machine loads it from its file and extends a
``str`` enum shaped like PEFT's ``PeftType``. Interpreters that are not installed are skipped.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parents[1] / "hf_layerif" / "tuners" / "peft_type.py"
SCRIPT = f"""
import enum, importlib.util, json, pickle, sys
spec = importlib.util.spec_from_file_location("peft_type", {str(HELPER)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

class PeftType(str, enum.Enum):
    LORA = "LORA"
    POLY = "POLY"

member = module.add_str_enum_member(PeftType, "LAYERIF")
assert module.add_str_enum_member(PeftType, "LAYERIF") is member
assert PeftType.LAYERIF is member and PeftType("LAYERIF") is member and PeftType["LAYERIF"] is member
assert isinstance(member, PeftType) and isinstance(member, str) and member == "LAYERIF"
assert member.value == "LAYERIF" and member.name == "LAYERIF"
assert [m.value for m in PeftType] == ["LORA", "POLY", "LAYERIF"] and "LAYERIF" in PeftType.__members__
assert json.dumps({{"peft_type": member}}) == '{{"peft_type": "LAYERIF"}}'
assert {{member: 1}}[PeftType("LAYERIF")] == 1
print("ok", sys.version_info[:2])
"""


def _interpreters():
    found = {}
    for version in ("3.10", "3.11", "3.12", "3.13"):
        candidates = sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
        candidates += [c for c in (shutil.which(f"python{version}"),) if c]
        for candidate in candidates:
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                   text=True, timeout=30)
            if probe.returncode == 0 and probe.stdout.strip() == str(tuple(int(x) for x in version.split("."))):
                found[version] = candidate
                break
    return found


@pytest.mark.parametrize("version", ["3.10", "3.11", "3.12", "3.13"])
def test_str_enum_extension(version):
    exe = _interpreters().get(version)
    if exe is None:
        pytest.skip(f"Python {version} is not installed here")
    result = subprocess.run([exe, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
