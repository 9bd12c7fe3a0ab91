"""Adapters whose weights are finite but absurd never reach users.

All-1e38 LoRA weights are finite, so the finiteness check passed them, yet
every logit they touch overflows: sampling met NaN probabilities and greedy
answers came back empty. Validation now bounds every value and each module's
update ``(alpha/rank) * B @ A``; the fine-tune worker runs the same check on
what it trained, and the evaluation gate holds back a candidate whose scores
are not finite instead of raising.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from adapters.base_shapes import BaseModelShapes
from adapters.errors import InvalidAdapter
from adapters.file_format import deserialize, serialize
from adapters.lora_weights import LoraWeights, tensor_name
from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir
from adapters.registry import AdapterRegistry
from adapters.validation import (
    MAX_UPDATE_RMS,
    MAX_WEIGHT_ABS,
    BaseModelSpec,
    ValidationLimits,
    check_magnitudes,
)
from finetune.base_loading import load_evaluation_base
from finetune.config import TrainingConfig
from finetune.conversations import tokenize_conversation
from finetune.evaluation import (
    GateRules,
    Variant,
    VariantScorer,
    evaluate_candidate,
    generic_conversations,
)
from finetune.generic_text import GENERIC_TEXTS
from finetune.queue import JobQueue
from finetune.worker import FinetuneWorker, WorkerConfig
from models.store import load_prepared
from storage.repositories import JobRepository
from storage.tables import AdapterKind, JobState
from tests.adapter_factory import random_lora
from tests.app_client import ADMIN, DEPLOYMENTS, app_client
from tests.backends import REDIS_URL, postgres_schema
from tests.finetune_fixtures import MODEL, add_examples, add_user, pirate_conversations, registry_on
from tests.server import prepared_model_store

pytestmark = pytest.mark.models

LIMITS = ValidationLimits()
Q0 = "layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def spec() -> BaseModelSpec:
    [model] = [m for m in load_prepared(prepared_model_store()) if m.id == MODEL]
    return BaseModelSpec.from_prepared(model)


def filled(lora: LoraWeights, value: float) -> LoraWeights:
    """``lora`` with every value replaced by ``value``."""
    tensors = {name: torch.full_like(t, value) for name, t in lora.tensors.items()}
    return dataclasses.replace(lora, tensors=tensors)


def round_trip(weights: LoraWeights, spec: BaseModelSpec) -> LoraWeights:
    """Through Tailor's file format, as the registry stores and loads a version."""
    return deserialize(serialize(weights, base_model_sha256=spec.sha256), base=spec, limits=LIMITS)


def refusal(weights: LoraWeights, spec: BaseModelSpec) -> str:
    with pytest.raises(InvalidAdapter) as caught:
        round_trip(weights, spec)
    return caught.value.reason


def constant_q0(spec: BaseModelSpec, *, a: float, b: float, alpha: float = 1.0) -> LoraWeights:
    """A rank-1 adapter of layer 0's q_proj whose update is ``alpha * a * b`` everywhere,
    so its RMS is exactly that."""
    shape = spec.shapes.modules["q_proj"]
    return LoraWeights(
        base_model_id=spec.id,
        rank=1,
        alpha=alpha,
        target_modules=("q_proj",),
        tensors={
            tensor_name(0, "q_proj", "lora_A"): torch.full((1, shape.in_features), a),
            tensor_name(0, "q_proj", "lora_B"): torch.full((shape.out_features, 1), b),
        },
    )


# --------------------------------------------------------------------------- validation


def test_all_1e38_weights_are_refused_naming_the_tensor_and_the_limit(
    spec: BaseModelSpec,
) -> None:
    hostile = filled(random_lora(spec.shapes, base_model_id=MODEL), 1e38)
    assert all(bool(torch.isfinite(t).all()) for t in hostile.tensors.values())

    reason = refusal(hostile, spec)

    assert f"{Q0}.lora_A.weight" in reason
    assert "1e+38" in reason and "limit of 1e+04" in reason


@pytest.mark.parametrize(
    ("case", "weights", "message"),
    [
        # Each value is fine for float32, but a product of two is 1e40 = inf.
        ("float32 product overflow", lambda s: constant_q0(s, a=1e20, b=1e20), "1e+20"),
        # Small enough values, whose update is a million times any base weight.
        (
            "update too large",
            lambda s: constant_q0(s, a=1000.0, b=1000.0),
            f"module {Q0}: its update (alpha/rank) * B @ A has an RMS of 1e+06",
        ),
        # Tiny weights, but serving multiplies B by alpha/rank = 1e30.
        (
            "alpha too large",
            lambda s: constant_q0(s, a=1e-3, b=1e-3, alpha=1e30),
            "times alpha/rank (1e+30)",
        ),
    ],
)
def test_finite_weights_too_large_to_serve_are_refused(
    spec: BaseModelSpec, case: str, weights: object, message: str
) -> None:
    assert callable(weights)
    assert message in refusal(weights(spec), spec), case


def test_the_limits_pass_every_legitimate_adapter_and_hold_at_their_borders(
    spec: BaseModelSpec,
) -> None:
    legitimate = [
        random_lora(spec.shapes, base_model_id=MODEL),
        random_lora(spec.shapes, base_model_id=MODEL, rank=8, scale=0.08, seed=5),
        # The largest fixture in the suite (update RMS 0.17): noise that changes answers.
        random_lora(spec.shapes, base_model_id=MODEL, scale=0.2, gate_experts=("adp_g",)),
    ]
    for weights in legitimate:
        loaded = round_trip(weights, spec)
        assert all(torch.equal(loaded.tensors[k], t) for k, t in weights.tensors.items())

    root = math.sqrt(MAX_UPDATE_RMS)
    round_trip(constant_q0(spec, a=root * 0.995, b=root * 0.995), spec)  # RMS 0.99
    assert "RMS of 1.01" in refusal(constant_q0(spec, a=root * 1.005, b=root * 1.005), spec)

    # One large value in A and a small B: the update is tiny, the value is not.
    def spike(value: float) -> LoraWeights:
        weights = constant_q0(spec, a=0.0, b=1e-3)
        weights.tensors[tensor_name(0, "q_proj", "lora_A")][0, 7] = value
        return weights

    round_trip(spike(MAX_WEIGHT_ABS), spec)
    reason = refusal(spike(-MAX_WEIGHT_ABS * 1.01), spec)
    assert f"{Q0}.lora_A.weight" in reason and "magnitude 1.01e+04" in reason


def test_check_magnitudes_refuses_nan_that_never_was_a_file(spec: BaseModelSpec) -> None:
    # The worker checks what it trained before any file exists.
    weights = constant_q0(spec, a=0.01, b=0.01)
    check_magnitudes(weights, LIMITS)
    weights.tensors[tensor_name(0, "q_proj", "lora_B")][3, 0] = math.nan
    with pytest.raises(InvalidAdapter, match=r"q_proj\.lora_B\.weight: holds NaN or infinite"):
        check_magnitudes(weights, LIMITS)


# --------------------------------------------------------------------------- the upload route


@pytest.fixture(
    params=[
        pytest.param(d, marks=[pytest.mark.postgres, pytest.mark.redis] if "postgres" in d else [])
        for d in DEPLOYMENTS
    ]
)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with app_client(request.param, tmp_path) as test_client:
        yield test_client


def test_an_upload_of_1e38_weights_gets_422_naming_the_module_and_stores_nothing(
    client: TestClient, tmp_path: Path
) -> None:
    user = client.post("/admin/users", json={"name": "ada"}, headers=ADMIN).json()
    shapes = BaseModelShapes.from_model_dir(prepared_model_store() / MODEL)
    folder = tmp_path / "hostile"
    export_peft_dir(filled(random_lora(shapes, base_model_id=MODEL, rank=8), 1e38), folder)

    response = client.post(
        "/admin/adapters",
        data={"user_id": user["id"], "base_model": MODEL},
        files=[("file", (n, (folder / n).read_bytes())) for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)],
        headers=ADMIN,
    )

    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert Q0 in message and "1e+38" in message and "limit of 1e+04" in message
    assert client.get("/admin/adapters", headers=ADMIN).json()["data"] == []
    blobs = tmp_path / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))


# --------------------------------------------------------------------------- fine-tunes


@pytest.mark.slow
def test_the_gate_holds_back_a_candidate_whose_loss_is_nan() -> None:
    model_dir = prepared_model_store() / MODEL
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    test = [
        tokenize_conversation(tokenizer, messages, max_length=512)
        for messages in pirate_conversations(3)
    ]
    # What a diverged fine-tune leaves in memory: finite weights whose logits are not.
    shapes = BaseModelShapes.from_model_dir(model_dir)
    diverged = filled(random_lora(shapes, base_model_id=MODEL), 1e30)
    scorer = VariantScorer(
        load_evaluation_base(model_dir, device=torch.device("cpu")),
        [Variant("base"), Variant("current"), Variant("candidate", (diverged,))],
        pad_id=0,
    )
    generic = generic_conversations(tokenizer, GENERIC_TEXTS[:1])

    report = evaluate_candidate(scorer, test, generic, rules=GateRules(resamples=100))

    assert report.promote is False
    assert math.isnan(report.nll_per_token["candidate"])
    assert math.isfinite(report.nll_per_token["base"])
    assert any(
        "candidate's NLL on the test split is not finite" in r and "3 of 3" in r
        for r in report.reasons
    )
    assert any("candidate's NLL on the generic text is not finite" in r for r in report.reasons)
    assert report.gain_vs_base.significant is False
    # What the registry stores with the candidate is plain JSON.
    metrics = report.as_metrics()
    assert metrics["promote"] is False and metrics["nll_per_token"]["candidate"] is None
    json.dumps(metrics, allow_nan=False)


@pytest.fixture
def pg_registry(tmp_path: Path) -> Iterator[AdapterRegistry]:
    # PostgreSQL refuses NaN in JSON, so a diverged run's events are tested there.
    with postgres_schema() as url, registry_on(url, tmp_path, REDIS_URL) as found:
        yield found


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_a_fine_tune_that_diverges_fails_with_the_reason_and_stores_nothing(
    pg_registry: AdapterRegistry, tmp_path: Path
) -> None:
    registry = pg_registry
    alice = add_user(registry.database, "alice")
    add_examples(registry.database, alice, pirate_conversations(10))
    with registry.database.session() as session:
        job, _ = JobRepository(session).create(
            kind=AdapterKind.SPECIALIST,
            base_model_id=MODEL,
            user_id=alice,
            # Adam moves each weight by about the learning rate: after step 1
            # lora_B is near 1e30, step 2's loss is NaN, and so are the weights.
            hyperparameters={"learning_rate": 1e30, "epochs": 2},
        )
        job_id = job.id
    worker = FinetuneWorker(
        JobQueue(registry.database, lease_seconds=60, retry_base_seconds=0),
        registry,
        WorkerConfig(
            name="w1",
            model_store_dir=prepared_model_store(),
            device="cpu",
            training=TrainingConfig(quantization="none", rank=4, alpha=8.0, batch_size=8),
            generic_texts=GENERIC_TEXTS[:1],
        ),
    )

    assert worker.run_one() == job_id

    with registry.database.session() as session:
        jobs = JobRepository(session)
        job = jobs.get(job_id=job_id)
        events = [(e.kind, e.payload) for e in jobs.list_events(job_id=job_id)]
    kinds = [kind for kind, _ in events]
    assert job.state is JobState.FAILED and job.attempt == 1, job.error
    assert job.error is not None and "training diverged (last loss nan)" in job.error
    assert ".weight: holds NaN or infinite values" in job.error
    # PostgreSQL stores no NaN: the diverged losses are recorded as null.
    assert [p["loss"] for k, p in events if k == "progress"][-1] is None
    assert next(p for k, p in events if k == "trained")["last_loss"] is None
    assert kinds[-1] == "error"
    assert "evaluation" not in kinds and "registered" not in kinds
    assert not any(p.is_file() for p in (tmp_path / "blobs").rglob("*"))
