"""The package structure holds at run time, where import-linter cannot look (issue #18, item 2).

- The device side of ``adapters`` (``adapters.device``: the multi-LoRA pool, layers and
  gate, the slot cache) imports no SQL. import-linter's ``forbidden`` contract checks the
  import graph; this checks a real interpreter, where the package roots that run first
  (``adapters/__init__.py``) count too.
- Every top-level package is one the project installs, type-checks and ships in the
  image, so a new layer (``models``) cannot be left out of one of them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Imports every module of the device side in a fresh interpreter and reports what SQL was
# loaded; then the catalog, to show the check would see SQL if it were there.
_PROBE = """
import json, pkgutil, sys
import adapters.device
device = sorted(
    m.name for m in pkgutil.walk_packages(adapters.device.__path__, "adapters.device.")
)
for name in device:
    __import__(name)
def sql():
    return sorted(
        m for m in sys.modules
        if m.split(".")[0] in ("sqlalchemy", "storage") or m == "adapters.registry"
    )
after_device = sql()
import adapters.registry
print(json.dumps({"device": device, "after_device": after_device, "after_catalog": sql()}))
"""


def test_the_device_side_of_adapters_imports_no_sql() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout)
    assert {"adapters.device.multi_lora.pool", "adapters.device.slot_cache"} <= set(
        report["device"]
    )
    assert report["after_device"] == []
    assert {"sqlalchemy", "storage", "adapters.registry"} <= set(report["after_catalog"])


def test_every_layer_is_installed_type_checked_and_in_the_image() -> None:
    layers = set(PYPROJECT["tool"]["importlinter"]["root_packages"])
    assert "models" in layers
    installed = {
        pattern.removesuffix("*")
        for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    checked = set(PYPROJECT["tool"]["mypy"]["files"])
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert installed == layers
    assert layers <= checked
    assert copied == layers
    assert all((ROOT / name / "__init__.py").is_file() for name in layers)
