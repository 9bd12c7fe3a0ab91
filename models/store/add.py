"""An operator's own base model, added to the model store (``tailor models add``), or removed.

Two kinds of source are taken:

- a Hugging Face directory of safetensors weights: its ``config.json``, weights and
  tokenizer files are copied (nothing else of it: no code, no unknown file), the
  tokenizer is saved again with the chat template asked for, and the copy must load
  with plain ``AutoModelForCausalLM`` and compute finite logits;
- a GGUF file: dequantised to float32 safetensors exactly as the packaged models are
  (``prepare.dequantise_gguf``).

Either way the entry is built under ``.<id>.partial-*`` and enters the store by one
rename with its manifest already written (``prepare.seal_store_entry``,
``prepare.move_into_place``), under the same per-model lock as ``tailor models
prepare``: a refused or failed add leaves nothing in the store.

Invariants:

- nothing is ever unpickled: a directory holding pickled weights (``.bin``, ``.pt``,
  ...) at its top level, the only level a copy takes files from, is refused before any
  file is opened, and every ``.safetensors`` file's header
  is read by ``models.safetensors_header`` first (a renamed pickle or zip is refused);
  remote code is never trusted;
- only the families of ``models.architectures`` are taken (the model's own
  ``model_type``, checked from its config before anything is copied, and again on the
  loaded model), as text-only ``*ForCausalLM`` checkpoints;
- an added model's id is a valid model id (``check_model_id``) and never one of a
  packaged model, ``auto`` or another entry of the store;
- only added models are removed here; the packaged ones belong to ``tailor models
  prepare``.

Which of the base models' rows go with these files is ``models.catalog``'s business.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from models.architectures import (
    NESTED_TEXT_CONFIG,
    SUPPORTED_GGUF_ARCHITECTURES,
    SUPPORTED_MODEL_TYPES,
    UnsupportedArchitecture,
    language_model_type,
)
from models.errors import (
    InvalidModelName,
    ModelNameTaken,
    ModelRefused,
    ModelRemovalRefused,
    ModelStoreError,
)
from models.safetensors_header import NotSafetensors, read_header
from models.store.packaged import PACKAGED_MODELS
from models.store.prepare import (
    MANIFEST_NAME,
    ChatTemplateChoice,
    PreparedModel,
    StoreEntry,
    combined_sha256,
    dequantise_gguf,
    exclusive_lock,
    move_into_place,
    read_prepared,
    remove_leftovers,
    seal_store_entry,
    sha256_file,
    share_like_config,
)
from models.store.prepare_extra import require_prepare_extra
from models.store.progress import PreparationStep, Progress
from models.store.query_encoder import QUERY_ENCODER_DIR
from storage.errors import NotFound

# A model id is a URL path segment, a directory name and a request's "model": lower
# case so that no two ids differ only in case, no ":" (fine-tuned models are named
# "ft:<base>:..."), at most 64 characters (the column holds 100).
MODEL_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# "auto" is the router's choice in a request's "model".
RESERVED_IDS = frozenset({"auto", QUERY_ENCODER_DIR, *(model.id for model in PACKAGED_MODELS)})

# Files that are or may hold a pickle: never opened, and their presence refuses the
# directory, since a checkpoint that ships them may mean them to be loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# What a Hugging Face directory contributes to the store copy besides its weights.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_MAX_CONFIG_BYTES = 1 << 20
_GGUF_MAGIC = b"GGUF"
# The bounds of a request's sampling fields, which a model's defaults must keep to
# (serving.generation_defaults ignores a value outside them).
_MAX_TEMPERATURE = 2.0
# Source strings are stored in a 500-character column.
_MAX_SOURCE = 500
_STEPS = 5
# How an added model's source string starts (a packaged one's names its package).
_SOURCE_PREFIXES = ("dir:", "gguf:")
_MB = 1_000_000

# Runs on the finished copy, before it enters the store: (model id, directory,
# context length). Serving passes one that runs the copy through its engine.
Verify = Callable[[str, Path, int], None]


@dataclass(frozen=True)
class AddOptions:
    """What ``tailor models add`` may say about the model beyond its files."""

    chat_template: ChatTemplateChoice = field(default_factory=ChatTemplateChoice)
    context_length: int | None = None
    """None: the config's ``max_position_embeddings``; else at most that."""
    price: float | None = None
    """Per 1M tokens; None: ``models.catalog``'s rule."""
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None

    def check(self) -> None:
        """``ModelRefused`` naming the first option out of its range."""
        if self.context_length is not None and self.context_length < 1:
            raise ModelRefused(f"the context length must be positive, not {self.context_length}")
        if self.price is not None and not (math.isfinite(self.price) and self.price >= 0):
            raise ModelRefused(f"the price must be a number of at least 0, not {self.price}")
        if self.temperature is not None and not 0.0 <= self.temperature <= _MAX_TEMPERATURE:
            raise ModelRefused(
                f"the temperature must be from 0 to {_MAX_TEMPERATURE:g}, not {self.temperature}"
            )
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ModelRefused(f"top_p must be above 0 and at most 1, not {self.top_p}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ModelRefused(f"max_tokens must be at least 1, not {self.max_tokens}")


def check_model_id(model_id: str) -> None:
    """``InvalidModelName`` unless ``model_id`` may name an added model."""
    if not MODEL_ID_PATTERN.fullmatch(model_id):
        raise InvalidModelName(
            f"{model_id!r} is not a valid model id: 1 to 64 characters of a-z, 0-9, '.', '-' "
            "and '_', starting with a letter or digit"
        )
    if model_id in RESERVED_IDS:
        raise ModelNameTaken(f"{model_id!r} is reserved: it names a packaged model or 'auto'")


def add_model(
    store_dir: Path,
    model_id: str,
    source: Path,
    options: AddOptions,
    *,
    progress: Progress,
    verify: Verify | None = None,
) -> PreparedModel:
    """Add ``source`` (a safetensors directory or a ``.gguf`` file) as ``store_dir/<model_id>``.

    Raises ``InvalidModelName``, ``ModelNameTaken`` or ``ModelRefused`` (whatever is wrong
    with the source or the options), each before the store changes.
    """
    check_model_id(model_id)
    options.check()
    source = source.expanduser()
    kind = _source_kind(source)
    # Everything that needs only the source, before the store is touched (not even a
    # lock file is left by a refused source).
    progress(PreparationStep(model_id, 0, _STEPS, f"checking {source}..."))
    inspected = _inspect_gguf(model_id, source) if kind == "gguf" else _inspect_directory(source)
    store_dir.mkdir(parents=True, exist_ok=True)
    target = store_dir / model_id
    with exclusive_lock(store_dir / f".{model_id}.lock"):
        if target.exists() or target.is_symlink():
            raise ModelNameTaken(f"the model store already holds {model_id!r}")
        remove_leftovers(store_dir, model_id)
        work = Path(tempfile.mkdtemp(prefix=f".{model_id}.partial-", dir=store_dir))
        try:
            started = time.perf_counter()
            out = work / "model"
            if kind == "gguf":
                entry = _from_gguf(model_id, source, inspected, out, options, progress)
            else:
                entry = _from_directory(model_id, source, inspected, work, out, options, progress)
            context_length = _context_length(model_id, out, options.context_length)
            _write_generation_defaults(out, options)
            share_like_config(out)
            if verify is not None:
                progress(PreparationStep(model_id, 3, _STEPS, "running it through the engine..."))
                verify(model_id, out, context_length)
            prepared = seal_store_entry(
                out,
                replace(entry, target=target, context_length=context_length),
                progress=progress,
                started=started,
            )
            move_into_place(out, target)
        except OSError as exc:  # a full disk, an unreadable file: one line, not a traceback
            raise ModelStoreError(f"{model_id}: {exc}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return prepared


def store_entry(store_dir: Path, model_id: str) -> PreparedModel | None:
    """The store's entry ``model_id`` (added or packaged); None when it has none."""
    target = store_dir / model_id
    if not (target / MANIFEST_NAME).is_file():
        return None
    return read_prepared(target)


def remove_model(store_dir: Path, model_id: str) -> None:
    """Delete the added model ``model_id`` from the store.

    ``NotFound`` when the store has no such model, ``ModelRemovalRefused`` for a
    packaged one. The directory leaves the store by one rename, then is deleted.
    """
    check_model_id_shape(model_id)
    target = store_dir / model_id
    with exclusive_lock(store_dir / f".{model_id}.lock"):
        if not target.is_dir():
            raise NotFound(f"the model store holds no model {model_id!r}")
        if (target / MANIFEST_NAME).is_file() and not read_prepared(target).added:
            # models.catalog checks this first; a store may be changed by hand meanwhile.
            raise ModelRemovalRefused(
                f"{model_id} is a packaged model (`tailor models prepare` puts it back); "
                "leave it out of TAILOR_MODELS instead"
            )
        stale = store_dir / f".{model_id}.old-{uuid.uuid4().hex}"
        target.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)


def is_added_source(source: str) -> bool:
    """Whether a base model's ``source`` is that of a model added here (not a packaged one)."""
    return source.startswith(_SOURCE_PREFIXES)


def check_model_id_shape(model_id: str) -> None:
    """``NotFound`` for a name no store entry can have (a path, a dot name), before it is
    joined to the store's path."""
    if not MODEL_ID_PATTERN.fullmatch(model_id) or model_id in {"auto", QUERY_ENCODER_DIR}:
        raise NotFound(f"the model store holds no model {model_id!r}")


def _source_kind(source: Path) -> str:
    try:
        if source.is_dir():
            return "directory"
        if source.is_file():
            with source.open("rb") as file:
                magic = file.read(len(_GGUF_MAGIC))
            if magic == _GGUF_MAGIC:
                return "gguf"
            raise ModelRefused(
                f"{source} is neither a GGUF file nor a directory of a Hugging Face model "
                "(safetensors weights with their config.json)"
            )
    except OSError as exc:  # a name too long, a file it may not read
        raise ModelRefused(f"{source}: {exc.strerror or exc}") from None
    raise ModelRefused(f"{source} does not exist")


def source_name(source: Path) -> str:
    """The ``source`` string a model added from ``source`` gets (``dir:`` or ``gguf:`` and
    its absolute path), or ``ModelRefused`` when it is neither."""
    source = source.expanduser()
    return _source_name("gguf" if _source_kind(source) == "gguf" else "dir", source)


def _source_name(prefix: str, path: Path) -> str:
    text = f"{prefix}:{path.resolve()}"
    # A source identifies the model for people; a path longer than the column keeps its end.
    return text if len(text) <= _MAX_SOURCE else text[:8] + "..." + text[-(_MAX_SOURCE - 11) :]


# Hugging Face directories --------------------------------------------------------------


@dataclass(frozen=True)
class _Inspected:
    """What the checks before the store is touched found out about a source."""

    architecture: str
    """The config's ``model_type``, or the GGUF's ``general.architecture``."""
    weights: tuple[Path, ...] = ()
    """A directory's safetensors files."""


def _inspect_directory(source: Path) -> _Inspected:
    # The top level only: that is all a store copy takes (subfolders, such as the
    # original/ of some checkpoints, are never read).
    try:
        pickles = sorted(
            path.name
            for path in source.iterdir()
            if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file()
        )
    except OSError as exc:
        raise ModelRefused(f"{source}: {exc.strerror or exc}") from None
    if pickles:
        raise ModelRefused(
            f"{source} holds pickled files ({', '.join(pickles[:5])}), which Tailor never "
            "loads: keep only the safetensors weights (save_pretrained(safe_serialization=True))"
        )
    config = _read_config(source)
    model_type = _text_model_type(config, source)
    weights = sorted(path for path in source.glob("*.safetensors") if path.is_file())
    if not weights:
        raise ModelRefused(f"{source} holds no .safetensors weights")
    for path in weights:
        try:
            read_header(path, label=str(path))
        except NotSafetensors as exc:
            raise ModelRefused(str(exc)) from None
    _check_shards(source, {path.name for path in weights})
    return _Inspected(model_type, tuple(weights))


def _from_directory(
    model_id: str,
    source: Path,
    inspected: _Inspected,
    work: Path,
    out: Path,
    options: AddOptions,
    progress: Progress,
) -> StoreEntry:
    weights = inspected.weights
    progress(PreparationStep(model_id, 1, _STEPS, f"copying {len(weights)} weight file(s)..."))
    out.mkdir()
    tokenizer_dir = work / "tokenizer"
    tokenizer_dir.mkdir()
    for name in _MODEL_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    for path in weights:
        shutil.copyfile(path, out / path.name)
    for name in (*_TOKENIZER_FILES, "config.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, tokenizer_dir / name)

    progress(PreparationStep(model_id, 2, _STEPS, "checking the copy loads..."))
    chat_template = _save_tokenizer(model_id, tokenizer_dir, out, options.chat_template)
    _check_loads(model_id, out)
    digests = sorted(sha256_file(path) for path in weights)
    return StoreEntry(
        id=model_id,
        architecture=inspected.architecture,
        target=out,
        source=_source_name("dir", source),
        source_sha256=combined_sha256(digests),
        chat_template=chat_template,
        added=True,
        price=options.price,
    )


def _read_config(source: Path) -> dict[str, Any]:
    path = source / "config.json"
    if not path.is_file():
        raise ModelRefused(f"{source} has no config.json: not a Hugging Face model directory")
    try:
        with path.open("rb") as file:
            raw = file.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ModelRefused(f"{path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ModelRefused(f"{path} is larger than {_MAX_CONFIG_BYTES} bytes: not a config")
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelRefused(f"{path} is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelRefused(f"{path} does not hold a JSON object")
    return config


def _text_model_type(config: dict[str, Any], source: Path) -> str:
    """The config's supported ``model_type``, of a text-only causal LM, or ``ModelRefused``."""
    try:
        model_type = language_model_type(config)
    except UnsupportedArchitecture as exc:
        raise ModelRefused(f"{source}: {exc}") from None
    if config.get("model_type") in NESTED_TEXT_CONFIG:
        raise ModelRefused(
            f"{source} is a multimodal {config['model_type']} checkpoint; add a text-only "
            f"export of its language model ({model_type})"
        )
    architectures = config.get("architectures")
    if isinstance(architectures, list) and not any(
        isinstance(name, str) and name.endswith("ForCausalLM") for name in architectures
    ):
        raise ModelRefused(
            f"{source} holds a {', '.join(map(str, architectures))}, not a causal language "
            "model (*ForCausalLM)"
        )
    return model_type


def _check_shards(source: Path, present: set[str]) -> None:
    index = source / "model.safetensors.index.json"
    if not index.is_file():
        return
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        needed = set(weight_map.values())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelRefused(f"{index} is malformed: {exc!r}") from None
    missing = sorted(str(name) for name in needed - present)
    if missing:
        raise ModelRefused(f"{source} lacks weight files its index names: {', '.join(missing)}")


def _save_tokenizer(
    model_id: str, tokenizer_dir: Path, out: Path, template: ChatTemplateChoice
) -> str | None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_dir, local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # transformers raises many kinds for a missing or bad tokenizer
        raise ModelRefused(f"{model_id}: its tokenizer does not load: {exc}") from None
    chat_template = template.apply(model_id, tokenizer)
    tokenizer.save_pretrained(out)
    return chat_template


def _check_loads(model_id: str, out: Path) -> None:
    """The copy loads with plain transformers, every weight from the files, and its
    logits on a short text are finite."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            out, local_files_only=True, trust_remote_code=False, output_loading_info=True
        )
        model, info = loaded
        tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    except Exception as exc:  # a config that does not fit its weights, among others
        raise ModelRefused(f"{model_id}: the model does not load: {exc}") from None
    if str(model.config.model_type) not in SUPPORTED_MODEL_TYPES:
        raise ModelRefused(f"{model_id}: it loads as a {model.config.model_type} model")
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        # transformers would fill them with random values and say nothing more.
        raise ModelRefused(
            f"{model_id}: its weights lack {len(missing)} tensor(s) of its config, e.g. "
            f"{', '.join(missing[:3])}"
        )
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(ids).logits
    if not torch.isfinite(logits).all():
        raise ModelRefused(f"{model_id}: its logits on a short text are not finite")


# GGUF files ------------------------------------------------------------------------------


def _inspect_gguf(model_id: str, source: Path) -> _Inspected:
    require_prepare_extra(model_id, ("gguf",))
    architecture = _gguf_architecture(source)
    if architecture not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ModelRefused(
            f"{source} holds a {architecture!r} model; supported GGUF architectures: "
            f"{', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
        )
    return _Inspected(architecture)


def _from_gguf(
    model_id: str,
    source: Path,
    inspected: _Inspected,
    out: Path,
    options: AddOptions,
    progress: Progress,
) -> StoreEntry:
    source_sha256 = sha256_file(source)
    size = source.stat().st_size / _MB
    progress(PreparationStep(model_id, 1, _STEPS, f"dequantising GGUF ({size:.0f} MB)..."))

    def family_problem(model_type: str) -> str | None:
        if model_type in SUPPORTED_MODEL_TYPES:
            return None
        return f"the GGUF loads as a {model_type} model; supported: {SUPPORTED_MODEL_TYPES}"

    try:
        chat_template = dequantise_gguf(
            model_id,
            source.resolve(),
            out,
            template=options.chat_template,
            family_problem=family_problem,
            progress=progress,
        )
    except ModelRefused:
        raise
    except Exception as exc:  # an unreadable or unconvertible GGUF
        raise ModelRefused(f"{model_id}: the GGUF cannot be converted: {exc}") from None
    return StoreEntry(
        id=model_id,
        architecture=inspected.architecture,
        target=out,
        source=_source_name("gguf", source),
        source_sha256=source_sha256,
        chat_template=chat_template,
        added=True,
        price=options.price,
    )


def _gguf_architecture(path: Path) -> str:
    from gguf import GGUFReader

    try:
        field = GGUFReader(path).fields.get("general.architecture")
        value = None if field is None else field.contents()
    except Exception as exc:  # the reader raises what numpy and struct do on a bad file
        raise ModelRefused(f"{path} is not a readable GGUF file: {exc}") from None
    if not isinstance(value, str):
        raise ModelRefused(f"{path} names no general.architecture")
    return value


# Options written into the copy -----------------------------------------------------------


def _context_length(model_id: str, out: Path, asked: int | None) -> int:
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    own = config.get("max_position_embeddings")
    if not isinstance(own, int) or isinstance(own, bool) or own < 1:
        if asked is None:
            raise ModelRefused(
                f"{model_id}: its config gives no max_position_embeddings; "
                "say the context length (--context-length)"
            )
        return asked
    window = config.get("sliding_window")
    if (
        isinstance(window, int)
        and 0 < window < own
        and "layer_types" not in config
        and config.get("use_sliding_window", True) is not False
    ):
        # A window on every layer (Mistral 7B v0.1): the engine builds its own masks,
        # windowed only per layer type, so past the window it would attend where the
        # model never looked. Within the window both agree.
        own = window
    if asked is not None and asked > own:
        raise ModelRefused(
            f"{model_id}: a context length of {asked} is more than the model's own {own}"
        )
    return own if asked is None else asked


def _write_generation_defaults(out: Path, options: AddOptions) -> None:
    """Merge the sampling defaults asked for into the copy's ``generation_config.json``,
    which ``serving.generation_defaults`` reads when the model is served."""
    asked = {
        "temperature": options.temperature,
        "top_p": options.top_p,
        "max_new_tokens": options.max_tokens,
    }
    if all(value is None for value in asked.values()):
        return
    path = out / "generation_config.json"
    config: dict[str, Any] = {}
    if path.is_file():
        loaded = json.loads(path.read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, dict) else {}
    config.update({key: value for key, value in asked.items() if value is not None})
    if options.temperature is not None:
        # A model's do_sample: false would otherwise win over the temperature given.
        config["do_sample"] = options.temperature > 0
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
