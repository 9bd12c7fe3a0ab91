"""Each decision that used to be written more than once has one owner (issue #18, item 1).

For every such decision the test calls the owner through each of its former paths and
shows that they agree, including in the case where the old copies drifted apart:

- the model ``auto`` answers with before feedback (``router.default_model``): the default
  router, the learning router and ``POST /v1/fine-tunes`` with ``model: "auto"``;
- the CoMiGS gate (``adapters.device.multi_lora.gate``): serving's multi-LoRA layer and
  training's gated peft layer;
- the rank-one inverse update (``router.online_ridge.sherman_morrison_update``): the
  quality ridge and the output-length predictor;
- the safetensors header reader (``models.safetensors_header``): adapter validation and
  the model store;
- the device an ``auto`` setting means (``models.device``): the model host,
  the fine-tune worker and Ray Serve's replica resources;
- the base model architectures served (``models.architectures``): adapter validation
  and the model store's ``tailor models add``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

import serving.model_host
from adapters.base_shapes import BaseModelShapes
from adapters.device.multi_lora.gate import gate_weights
from adapters.device.multi_lora.layer import MultiLoraLinear, Route, Routing
from adapters.device.multi_lora.pool import ModulePool
from adapters.errors import InvalidAdapter
from adapters.validation import ValidationLimits, read_container
from finetune.experts import GatedExperts
from finetune.worker import WorkerConfig
from models.architectures import SUPPORTED_MODEL_TYPES
from models.device import device_name, pick_device
from models.errors import ModelRefused
from models.safetensors_header import MAX_HEADER_BYTES, NotSafetensors, parse_header, read_header
from models.store.add import AddOptions, add_model
from models.store.prepare import _count_parameters
from router import Candidate, DefaultModelRouter, EagleRouter, RouteRequest
from router.default_model import cheapest, default_model
from router.length_predictor import OutputLengthPredictor
from router.online_ridge import OnlineRidge, sherman_morrison_update
from serving.ray_serve import model_deployment_options
from serving.settings import load_settings
from storage.repositories import BaseModelRepository
from tests.app_client import ADMIN, app_client, bearer

SMOLLM2, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"

# --- the model `auto` answers with before feedback ------------------------------------------


class _FlatEmbedder:
    """The learning router needs an embedder; before feedback the text does not matter."""

    name = "flat"
    dimensions = 4

    def embed(self, text: str) -> npt.NDArray[np.float32]:
        return np.full(self.dimensions, 0.5, dtype=np.float32)


def _routers_pick(candidates: list[Candidate], configured: str | None) -> tuple[str, str]:
    request = RouteRequest(user_id="u", prompt_text="hello", prompt_tokens=3, max_tokens=8)
    fixed = DefaultModelRouter(configured).route(request, candidates).model
    learning = EagleRouter(
        [c.model for c in candidates], _FlatEmbedder(), default_model=configured
    ).route(request, candidates)
    assert learning.reason == "default"
    return fixed, learning.model


# The smallest model (listed first, as the catalogue lists by size) is not the cheapest.
BY_SIZE = [
    Candidate("a-small", cost_per_million_tokens=3.0, chat=True),
    Candidate("b-medium", cost_per_million_tokens=0.5, chat=True),
    Candidate("c-large", cost_per_million_tokens=0.5, chat=True),
]


@pytest.mark.parametrize(
    ("configured", "expected"),
    [(None, "b-medium"), ("c-large", "c-large"), ("not-served", "b-medium")],
)
def test_both_routers_answer_auto_with_the_owners_default(
    configured: str | None, expected: str
) -> None:
    assert default_model(BY_SIZE, configured) == expected  # ties on price go to the id
    assert default_model(list(reversed(BY_SIZE)), configured) == expected  # order-free
    assert _routers_pick(BY_SIZE, configured) == (expected, expected)


def test_cheapest_breaks_ties_by_id_and_refuses_nothing_to_pick() -> None:
    assert cheapest(reversed(BY_SIZE)).model == "b-medium"
    with pytest.raises(Exception, match="no candidate"):
        default_model([], "a-small")


@pytest.mark.models
def test_a_fine_tune_on_auto_uses_the_routers_default_not_the_smallest(tmp_path: Path) -> None:
    # Configured prices make the larger model the cheaper one: the case the route's own
    # copy of the rule (the smallest model) got wrong.
    prices = {SMOLLM2: 5.0, GEMMA: 0.1}
    with app_client("sqlite+memory", tmp_path, router={"model_costs": prices}) as client:
        services: Any = client.app.state.services  # type: ignore[attr-defined]
        with services.database.session() as session:
            rows = BaseModelRepository(session).list_all()
            assert rows[0].id == SMOLLM2  # listed first: the smallest
            candidates = [
                Candidate(r.id, r.cost_per_million_tokens, chat=r.chat_template is not None)
                for r in rows
            ]
        assert _routers_pick(candidates, None) == (GEMMA, GEMMA)

        _user, key = _user_with_ten_examples(client)
        job = client.post("/v1/fine-tunes", json={"model": "auto"}, headers=key)
        assert job.status_code == 201, job.text
        assert job.json()["model"] == default_model(candidates, None) == GEMMA


@pytest.mark.models
def test_fine_tunes_and_serving_agree_on_the_models_served_here(tmp_path: Path) -> None:
    """TAILOR_MODELS: the model host, `auto` and an explicit fine-tune model all read it
    through models.catalog.served_models; a job for a model not served here is a 404."""
    prices = {SMOLLM2: 5.0, GEMMA: 0.1}  # Gemma cheaper: `auto` would take it if it could
    with app_client(
        "sqlite+memory", tmp_path, router={"model_costs": prices}, engine={"models": [SMOLLM2]}
    ) as client:
        user, key = _user_with_ten_examples(client)
        job = client.post("/v1/fine-tunes", json={"model": "auto"}, headers=key)
        assert job.status_code == 201, job.text
        assert job.json()["model"] == SMOLLM2
        unserved = client.post("/v1/fine-tunes", json={"model": GEMMA}, headers=key)
        assert unserved.status_code == 404
        assert unserved.json()["error"]["code"] == "model_not_found"
        queued = client.post(
            "/admin/jobs", json={"model": GEMMA, "user_id": user["id"]}, headers=ADMIN
        )
        assert queued.status_code == 404


def _user_with_ten_examples(client: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A new user with enough examples for a specialist job, and their key."""
    user = client.post("/admin/users", json={"name": "ada"}, headers=ADMIN).json()
    key = bearer(user["api_key"])
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": f"a{i}"},
                ]
            }
        )
        for i in range(10)
    ]
    uploaded = client.post(
        "/v1/examples",
        content="\n".join(lines),
        headers={**key, "Content-Type": "application/jsonl"},
    )
    assert uploaded.status_code == 201, uploaded.text
    return user, key


# --- the CoMiGS gate ---------------------------------------------------------------------------

IN, OUT, RANK, EXPERTS, TOP_K = 6, 5, 2, 3, 2


class _PeftLikeLayer(nn.Module):
    """What ``GatedExperts`` reads of a peft LoRA layer."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        for e in range(EXPERTS):
            down, up = nn.Linear(IN, RANK, bias=False), nn.Linear(RANK, OUT, bias=False)
            with torch.no_grad():
                down.weight.copy_(a[e])
                up.weight.copy_(b[e])
            self.lora_A[f"e{e}"], self.lora_B[f"e{e}"] = down, up
            self.scaling[f"e{e}"] = scale


def test_serving_and_training_mix_experts_with_the_one_gate() -> None:
    generator = torch.Generator().manual_seed(7)
    base = nn.Linear(IN, OUT)
    a = torch.randn(EXPERTS, RANK, IN, generator=generator)
    b = torch.randn(EXPERTS, OUT, RANK, generator=generator)
    gate = torch.randn(EXPERTS, IN, generator=generator)
    scale = 0.5
    x = torch.randn(1, 4, IN, generator=generator)

    # Serving: slots 1..3 hold the experts (scale folded into B), slot 3 also the gate.
    pool = ModulePool(
        IN,
        OUT,
        num_slots=4,
        max_rank=RANK,
        max_experts=EXPERTS,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    for e in range(EXPERTS):
        pool.lora_A[e + 1] = a[e]
        pool.lora_B[e + 1] = (b[e] * scale).t()
    pool.gate[3] = gate
    pool.has_gate[3] = True
    routing = Routing()
    served_layer = MultiLoraLinear(base, pool, routing, top_k=TOP_K)
    slots = torch.tensor([[1, 2, 3]])
    routing.current = Route(expert_slots=slots, gate_slots=torch.tensor([3]))
    with torch.no_grad():
        served = served_layer(x)
        served_weights = served_layer._gate_weights(x, slots, torch.tensor([3]))

    # Training: peft's layout, the gate a trainable parameter.
    trained_layer = GatedExperts(
        _PeftLikeLayer(base, a, b, scale),
        [f"e{e}" for e in range(EXPERTS)],
        nn.Parameter(gate.clone()),
        TOP_K,
    )
    trained = trained_layer(x)

    # One function, and each path's weights are exactly its output on that path's logits
    # (computed as serving does, with bmm: a plain matmul may round differently by a ulp).
    served_logits = torch.bmm(x, gate.t().unsqueeze(0))
    torch.testing.assert_close(served_weights, gate_weights(served_logits, TOP_K), rtol=0, atol=0)
    assert (served_weights == 0).sum(dim=-1).eq(EXPERTS - TOP_K).all()
    torch.testing.assert_close(trained.detach(), served, atol=1e-5, rtol=1e-5)
    # The shared function keeps training's gradient to the gate.
    trained.sum().backward()
    assert trained_layer.gate is not None and trained_layer.gate.grad is not None
    assert torch.isfinite(trained_layer.gate.grad).all() and trained_layer.gate.grad.abs().sum() > 0


# --- the rank-one inverse update -------------------------------------------------------------


def test_both_ridges_update_their_inverse_with_the_one_sherman_morrison() -> None:
    rng = np.random.default_rng(3)
    dimensions, ridge = 4, 2.0
    embeddings = rng.normal(size=(12, dimensions))
    lengths = rng.integers(1, 400, size=12)

    quality = OnlineRidge(["m"], dimensions, penalty=ridge, intercept_penalty=ridge)
    expected_quality = quality.inverse("m")
    profile = OutputLengthPredictor(dimensions, ridge=ridge)
    expected_profile = np.eye(dimensions + 2) / ridge
    for i, (vector, tokens) in enumerate(zip(embeddings, lengths, strict=True)):
        weight = 1.0 + i % 3
        quality.observe(vector, {"m": 0.5}, weight=weight)
        sherman_morrison_update(expected_quality, np.append(vector, 1.0), weight=weight)
        profile.observe("m", vector, prompt_tokens=0, completion_tokens=int(tokens))
        sherman_morrison_update(expected_profile, np.concatenate([vector, [1.0, 0.0]]))
        # Each class's state is exactly the owner's, bit for bit.
        assert np.array_equal(quality.inverse("m"), expected_quality)
        assert np.array_equal(profile._fits["m"].inverse, expected_profile)

    # With a zero prompt-length feature the two are the same ridge on [vector, 1] (weights
    # aside), and both equal the closed form.
    features = np.hstack([embeddings, np.ones((12, 1))])
    weights = 1.0 + np.arange(12) % 3
    closed = np.linalg.inv(features.T @ (weights[:, None] * features) + ridge * np.eye(5))
    assert np.allclose(quality.inverse("m"), closed, atol=1e-12)
    unweighted = np.linalg.inv(features.T @ features + ridge * np.eye(5))
    assert np.allclose(profile._fits["m"].inverse[:5, :5], unweighted, atol=1e-12)


# --- the safetensors header reader -----------------------------------------------------------


def test_adapters_and_the_model_store_read_a_header_alike(tmp_path: Path) -> None:
    tensors = {"w": torch.zeros(3, 4), "v": torch.ones(5, dtype=torch.bfloat16)}
    data = save_safetensors(tensors, metadata={"format": "x"})
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)

    from_bytes = parse_header(data, label="f")
    from_file = read_header(path)
    assert from_bytes == from_file
    container = read_container(data, limits=ValidationLimits(), label="f")
    assert dict(container.metadata) == from_file.entries["__metadata__"] == {"format": "x"}
    assert {n: e.shape for n, e in container.tensors.items()} == {
        n: tuple(e["shape"]) for n, e in from_file.entries.items() if n != "__metadata__"
    }
    assert _count_parameters([path]) == (12 + 5, {"float32", "bfloat16"})


def test_both_paths_refuse_a_pickle_without_unpickling(tmp_path: Path) -> None:
    payload = pickle.dumps({"not": "tensors"}, protocol=4)
    path = tmp_path / "model.safetensors"
    path.write_bytes(payload)
    with pytest.raises(InvalidAdapter, match="is a Python pickle; pickle files are not accepted"):
        read_container(payload, limits=ValidationLimits(), label="adapter")
    with pytest.raises(NotSafetensors, match="is a Python pickle; pickle files are not accepted"):
        _count_parameters([path])


def test_the_model_store_path_bounds_the_header_before_reading_it(tmp_path: Path) -> None:
    # A sparse file claiming a header just over the format's cap: refused from 9 bytes.
    path = tmp_path / "huge.safetensors"
    length = MAX_HEADER_BYTES + 1
    with path.open("wb") as file:
        file.write(length.to_bytes(8, "little") + b"{")
        file.truncate(8 + length + 1)
    with pytest.raises(NotSafetensors, match="over 100 MB"):
        read_header(path)
    truncated = (2**64 - 1).to_bytes(8, "little") + b"{}"
    path.write_bytes(truncated)
    message = "header length of 18446744073709551615 bytes, but only 2 bytes follow"
    with pytest.raises(NotSafetensors, match=message):
        _count_parameters([path])
    with pytest.raises(InvalidAdapter, match=message):
        read_container(truncated, limits=ValidationLimits(), label="model.safetensors")


# --- the device an `auto` setting means ------------------------------------------------------


@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("setting", ["auto", "cpu", "cuda", "cuda:1"])
def test_host_worker_and_ray_agree_on_the_device(
    setting: str, cuda: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    device = pick_device(setting)
    assert str(device) == device_name(setting)
    if setting == "auto":
        assert device == torch.device("cuda" if cuda else "cpu")
    # The model host loads on the owner's device; the worker trains on it.
    assert vars(serving.model_host)["pick_device"] is pick_device
    assert WorkerConfig(name="w", model_store_dir=Path("."), device=setting).torch_device == device
    # Ray reserves a GPU for a model replica exactly when the model will run on one.
    options = model_deployment_options(load_settings(engine={"device": setting}), "m")
    assert options["ray_actor_options"]["num_gpus"] == (1 if device.type == "cuda" else 0)


def test_explicit_devices_are_kept_as_written() -> None:
    assert [device_name(s) for s in ("cpu", "cuda", "cuda:1")] == ["cpu", "cuda", "cuda:1"]


# --- the architectures served ------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type", ["llama", "mistral", "qwen3", "gemma3_text", "gpt2", "bert", "phi3", "falcon"]
)
def test_adapter_validation_and_the_model_store_take_the_same_architectures(
    model_type: str, tmp_path: Path
) -> None:
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
    config = {"model_type": model_type, "num_hidden_layers": 2, **sizes}
    try:
        BaseModelShapes.from_config(config)
        adapters_take = True
    except ValueError as exc:
        assert "unsupported base model architecture" in str(exc)
        adapters_take = False
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    # The architecture is checked before anything else: a config the store takes gets
    # as far as its missing weights.
    with pytest.raises(ModelRefused) as refused:
        add_model(tmp_path / "store", "m", source, AddOptions(), progress=lambda step: None)
    store_takes = "unsupported base model architecture" not in str(refused.value)
    if store_takes:
        assert "holds no .safetensors weights" in str(refused.value)
    assert store_takes == adapters_take == (model_type in SUPPORTED_MODEL_TYPES)
