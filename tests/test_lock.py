"""The lock: current with pyproject.toml, complete, hashed, and exactly what is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def locked_pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            requirement = Requirement(line.split(" ", 1)[0].rstrip("\\").strip())
            (specifier,) = requirement.specifier
            pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = project["dependencies"] + [
        requirement for extra in project["optional-dependencies"].values() for requirement in extra
    ]
    return [Requirement(name) for name in names]


def test_the_committed_lock_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "lock.py"), "check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_a_dependency_changed_without_a_new_lock_is_caught(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "requirements.lock", "requirements-models.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "lock.py", tmp_path / "tools" / "lock.py")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"redis>=5.0"', '"redis>=9.0"'))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "tools" / "lock.py"), "check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "requirements.lock does not match pyproject.toml" in result.stderr
    assert "make lock" in result.stderr


def test_every_requirement_of_the_project_is_pinned_within_its_range() -> None:
    pins = locked_pins()
    for requirement in project_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in the lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"the lock pins {name}=={pins[name]}, outside {requirement}"
        )
    # The CPU build that lies on the development machines, not a CUDA one.
    assert pins["torch"].local == "cpu"
    assert not any(name.startswith("nvidia-") for name in pins)


def test_every_locked_package_has_a_hash() -> None:
    entries = LOCK.read_text().split("\n")
    pinned = [i for i, line in enumerate(entries) if line and line[0].isalpha()]
    for index in pinned:
        entry = entries[index]
        following = entries[index + 1] if index + 1 < len(entries) else ""
        assert "--hash=sha256:" in entry or "--hash=sha256:" in following, entry


def test_the_environment_holds_exactly_the_lock() -> None:
    pins = locked_pins()
    # The venv's own site-packages only: Ray puts its vendored packages on
    # sys.path once imported, and they are no installed distributions.
    site_packages = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed: dict[str, Version] = {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version)
        for dist in metadata.distributions(path=site_packages)
    }
    installed.pop("tailor")  # this project itself, installed editable beside the lock
    installed.pop("pip")  # the virtual environment's own installer, from ensurepip
    assert installed == pins
