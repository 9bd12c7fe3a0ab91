"""The engine's model runner alone: forwards over a batch whose rows come and go, and sampling.

On the tiny random llama of tests/test_engine_isolation.py: every row's logits,
whatever joined or left the batch, are those of its own tokens run alone
through the model, and a batch without gates never runs the gate path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
import torch

import serving.engine.model_runner as model_runner
from adapters.base_shapes import BaseModelShapes
from adapters.device.multi_lora import MultiLoraLinear, MultiLoraModel, Route
from adapters.device.slot_cache import AdapterSlotCache, SlotLease
from adapters.expert_sets import ExpertRef, ExpertSet
from serving.engine.cuda_graphs import DecodeGraphs, column_bucket, row_bucket
from serving.engine.errors import InvalidSampling, NonFiniteLogits, RequestFailed
from serving.engine.model_runner import Logits, ModelRunner, RowState
from serving.engine.sampling import MAX_SEED, SamplingParams
from storage.tables import AdapterKind
from tests.adapter_factory import random_lora
from tests.test_engine_isolation import VOCAB, tiny_llama

MODEL = "tiny"
GREEDY = SamplingParams(max_tokens=64, temperature=0)
# Batched (left-padded) and alone, float32 attention sums in another order.
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def inference() -> Iterator[None]:
    with torch.inference_mode():  # as on the engine thread
        yield


def new_row(
    runner: ModelRunner,
    prompt: Sequence[int],
    *,
    params: SamplingParams = GREEDY,
    lease: SlotLease | None = None,
    adapted: bool = False,
) -> RowState:
    return runner.new_row(
        request_id=f"r{len(prompt)}",
        prompt_ids=tuple(prompt),
        params=params,
        lease=lease,
        adapted=adapted,
    )


def alone(model: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """The next-token logits of ``ids`` run alone, without a cache."""
    logits: torch.Tensor = model(input_ids=torch.tensor([list(ids)])).logits[0, -1]
    return logits


class Tracked:
    """A row and every token it has seen, to check its logits against ``alone``."""

    def __init__(self, runner: ModelRunner, prompt: list[int]) -> None:
        self.row = new_row(runner, prompt)
        self.ids = list(prompt)

    def feed(self, logits: torch.Tensor) -> None:
        """Take the greedy token of the row's last logits as the next one fed."""
        token = int(logits.argmax())
        self.row.pending_token = token
        self.ids.append(token)


def check(model: torch.nn.Module, tracked: list[Tracked], logits: torch.Tensor) -> None:
    assert logits.shape == (len(tracked), VOCAB)
    for index, one in enumerate(tracked):
        expected = alone(model, one.ids)
        torch.testing.assert_close(logits[index], expected, atol=TOLERANCE, rtol=TOLERANCE)
        one.feed(logits[index])


def test_rows_joining_and_leaving_keep_the_logits_of_each_row_alone() -> None:
    model = tiny_llama()
    runner = ModelRunner(model)
    a, b = Tracked(runner, [3, 1, 4, 1, 5]), Tracked(runner, [9, 2, 6, 5, 3, 5, 8, 9, 7])
    prefill = runner.prefill([a.row, b.row])
    check(model, [a, b], prefill.logits)
    runner.join(prefill, [0, 1])
    batch = [a, b]
    for _ in range(3):
        check(model, batch, runner.decode([t.row for t in batch]).ordered())
    assert [a.row.kv_length, b.row.kv_length] == [len(a.ids) - 1, len(b.ids) - 1]

    # Two more prompts, of which only the second joins (the first ended at once).
    c, d = Tracked(runner, [7, 7, 7]), Tracked(runner, [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4])
    prefill = runner.prefill([c.row, d.row])
    check(model, [c, d], prefill.logits)
    runner.join(prefill, [1])
    assert c.row.cache_row == -1 and runner.rows_in_use == 3
    batch = [a, b, d]
    for _ in range(2):
        check(model, batch, runner.decode([t.row for t in batch]).ordered())

    # b leaves; a and d go on, d in its own row after b's freed one (a hole).
    batch = [a, d]
    runner.retain([t.row for t in batch])
    assert d.row.cache_row == 3 and runner.rows_in_use == 2
    for _ in range(2):
        check(model, batch, runner.decode([t.row for t in batch]).ordered())
    runner.retain([])
    assert runner.rows_in_use == 0


def test_a_row_keeps_its_place_and_a_new_one_fills_a_hole_without_moving_memory() -> None:
    model = tiny_llama()
    runner = ModelRunner(model, max_rows=4, context_length=256)
    runner.cache.reserve()
    long = Tracked(runner, [5] * 100)
    short, third = Tracked(runner, [1, 2, 3]), Tracked(runner, [4, 4])
    prefill = runner.prefill([long.row, short.row, third.row])
    check(model, [long, short, third], prefill.logits)
    runner.join(prefill, [0, 1, 2])
    addresses = [tensor.data_ptr() for tensor in runner.cache.tensors()]
    assert addresses  # the first forward allocated them
    check(model, [long, short, third], runner.decode([long.row, short.row, third.row]).ordered())

    # The long row leaves; a new prompt takes its row (the lowest free one).
    runner.retain([short.row, third.row])
    new = Tracked(runner, [6, 1, 6, 1])
    prefill = runner.prefill([new.row])
    check(model, [new], prefill.logits)
    runner.join(prefill, [0])
    assert new.row.cache_row == 0
    batch = [short, third, new]
    for _ in range(3):
        check(model, batch, runner.decode([t.row for t in batch]).ordered())
    # Nothing was reallocated or copied: the rows stayed where they were written.
    assert [tensor.data_ptr() for tensor in runner.cache.tensors()] == addresses


def test_the_cache_grows_by_doubling_only_when_a_row_or_a_sequence_needs_it() -> None:
    model = tiny_llama()
    runner = ModelRunner(model, max_rows=16, context_length=512)
    rows = [Tracked(runner, [1 + i, 2, 3]) for i in range(5)]
    prefill = runner.prefill([t.row for t in rows])
    check(model, rows, prefill.logits)
    runner.join(prefill, range(5))
    assert (runner.cache.row_capacity, runner.cache.column_capacity) == (8, 64)
    longer = Tracked(runner, list(range(1, 101)))
    prefill = runner.prefill([longer.row])
    check(model, [longer], prefill.logits)
    runner.join(prefill, [0])
    assert (runner.cache.row_capacity, runner.cache.column_capacity) == (8, 128)
    check(model, [*rows, longer], runner.decode([t.row for t in [*rows, longer]]).ordered())
    with pytest.raises(ValueError, match="at most 16 rows of 512 columns"):
        runner.cache.ensure(17, 10)


def tiny_gemma3(sliding_window: int) -> torch.nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"],
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    model.train(False)
    return model


def test_a_sliding_window_layer_sees_only_its_window_in_prefill_and_decode() -> None:
    model = tiny_gemma3(sliding_window=4)
    runner = ModelRunner(model)
    # Prompts longer and shorter than the window, one of the longer ones padded
    # (left padding shifts its columns, not its positions), decoded past it.
    a = Tracked(runner, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    b, c = Tracked(runner, [7, 7, 2, 8, 1, 8]), Tracked(runner, [7, 7])
    prefill = runner.prefill([a.row, b.row, c.row])
    check(model, [a, b, c], prefill.logits)
    runner.join(prefill, [0, 1, 2])
    for _ in range(6):
        check(model, [a, b, c], runner.decode([a.row, b.row, c.row]).ordered())
    # The window matters here: the same weights with a window wider than the
    # sequence give other logits, so a mask that ignored it would have failed.
    wide = tiny_gemma3(sliding_window=512)
    assert not torch.allclose(alone(wide, a.ids), alone(model, a.ids), atol=1e-3)


def test_a_row_taken_after_a_broken_request_does_not_inherit_its_non_finite_keys() -> None:
    model = tiny_llama()
    runner = ModelRunner(model)
    broken = new_row(runner, [1, 2, 3])
    runner.join(runner.prefill([broken]), [0])
    # As a broken adapter leaves it: NaN keys and values all along its row.
    for layer in runner.cache.row_layers:
        assert layer.key_rows is not None and layer.value_rows is not None
        layer.key_rows[0] = float("nan")
        layer.value_rows[0] = float("nan")
    runner.retain([])
    fresh = Tracked(runner, [4, 5])
    prefill = runner.prefill([fresh.row])
    runner.join(prefill, [0])
    assert fresh.row.cache_row == 0
    check(model, [fresh], prefill.logits)
    for _ in range(3):  # decode reads columns past the prompt, hidden by the mask
        check(model, [fresh], runner.decode([fresh.row]).ordered())


def test_a_prompt_prefilled_in_chunks_between_decode_steps_equals_it_run_alone() -> None:
    model = tiny_llama()
    runner = ModelRunner(model)
    long = Tracked(runner, [(7 * i) % 50 + 1 for i in range(30)])
    # The first chunk takes row 0; a short request then runs in row 1, and its
    # decode steps pass over row 0 as a hole while the long prompt is unfinished.
    first = runner.prefill([long.row], [8])
    runner.join(first, [0])
    assert long.row.prefilled == 8 and long.row.cache_row == 0
    short = Tracked(runner, [4, 2])
    prefill = runner.prefill([short.row])
    runner.join(prefill, [0])
    check(model, [short], prefill.logits)
    for chunk in (10, 12):
        check(model, [short], runner.decode([short.row]).ordered())
        more = runner.prefill([long.row], [chunk])
        runner.join(more, [0])
    assert long.row.prefilled == 30
    check(model, [long], more.logits)  # the whole prompt's next-token logits
    for _ in range(3):
        check(model, [long, short], runner.decode([long.row, short.row]).ordered())
    with pytest.raises(ValueError, match="goes on alone"):
        runner.prefill([long.row, short.row], [1, 1])


def test_a_full_cache_refuses_a_prefill_and_keeps_its_rows() -> None:
    runner = ModelRunner(tiny_llama(), max_rows=2)
    first = new_row(runner, [1, 2])
    runner.join(runner.prefill([first]), [0])
    with pytest.raises(RuntimeError, match="2 prompts but 1 free cache rows"):
        runner.prefill([new_row(runner, [3]), new_row(runner, [4])])
    assert runner.rows_in_use == 1 and first.cache_row == 0


class FailingDecode(torch.nn.Module):
    """A model whose decode forward raises after writing into the cache."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        output = self.inner(input_ids=input_ids, **kwargs)
        if "logits_to_keep" not in kwargs:
            raise RuntimeError("simulated failure of a decode forward")
        return output


def test_a_failed_decode_drops_the_cache_and_counts_no_token() -> None:
    runner = ModelRunner(FailingDecode(tiny_llama()))
    row = new_row(runner, [1, 2, 3])
    prefill = runner.prefill([row])
    runner.join(prefill, [0])
    row.pending_token = int(prefill.logits[0].argmax())
    with pytest.raises(RuntimeError, match="simulated"):
        runner.decode([row])
    assert runner.rows_in_use == 0  # no half-written step is kept
    assert row.kv_length == 3 and row.cache_row == -1


def test_sampling_fails_only_the_rows_that_cannot_sample() -> None:
    runner = ModelRunner(tiny_llama())
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0))
    logits[1, 7] = math.nan
    logits[2, 3] = math.inf
    logits[4] = logits[3]
    seeded = SamplingParams(temperature=0.9, top_p=0.8, seed=42)
    rows = [
        new_row(runner, [1]),
        new_row(runner, [1], adapted=True),
        new_row(runner, [1]),
        new_row(runner, [1], params=seeded),
        new_row(runner, [1], params=seeded),
    ]
    tokens = runner.sample(rows, Logits.dense(logits))
    assert tokens[0] == int(logits[0].argmax())
    assert isinstance(tokens[1], NonFiniteLogits) and "adapter may be broken" in str(tokens[1])
    assert isinstance(tokens[2], NonFiniteLogits) and "adapter" not in str(tokens[2])
    # The same seed over the same logits draws the same token, whatever the batch.
    assert isinstance(tokens[3], int) and tokens[3] == tokens[4]
    again = runner.sample([new_row(runner, [1], params=seeded)], Logits.dense(logits[3:4]))
    assert again == [tokens[3]]


def test_a_sampler_that_raises_fails_its_row_with_the_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = ModelRunner(tiny_llama())

    def broken(*_args: object) -> int:
        raise RuntimeError("simulated sampler failure")

    monkeypatch.setattr(model_runner, "sample_rows", broken)
    sampled = SamplingParams(temperature=0.7, seed=1)
    logits = torch.zeros(2, VOCAB)
    logits[0, 5] = 1.0
    tokens = runner.sample(
        [new_row(runner, [1]), new_row(runner, [1], params=sampled)], Logits.dense(logits)
    )
    assert tokens[0] == 5
    failed = tokens[1]
    assert isinstance(failed, RequestFailed)
    assert str(failed) == "generating this request's next token failed"
    assert isinstance(failed.__cause__, RuntimeError)


def test_a_seed_the_sampler_refuses_is_invalid_sampling() -> None:
    runner = ModelRunner(tiny_llama())
    params = SamplingParams(temperature=0.7, seed=1)
    object.__setattr__(params, "seed", MAX_SEED + 1)  # a caller that skipped validation
    with pytest.raises(InvalidSampling, match="cannot seed the sampler"):
        new_row(runner, [1, 2], params=params)
    assert new_row(runner, [1, 2]).generator is None  # greedy needs none
    assert new_row(runner, [1, 2], params=SamplingParams(seed=3)).generator is not None


# ------------------------------------------------------------------ adapters and gates


def ref(name: str, kind: AdapterKind = AdapterKind.SPECIALIST) -> ExpertRef:
    return ExpertRef(name, f"{name}-v1", 1, kind, "0" * 64, MODEL)


GENERALIST = ref("generalist", AdapterKind.GENERALIST)


class Adapted:
    """The tiny llama behind a multi-LoRA pool with plain and gated experts."""

    def __init__(self) -> None:
        model: Any = tiny_llama()
        shapes = BaseModelShapes.from_config(model.config.to_dict())
        targets = ("q_proj", "v_proj", "down_proj")
        weights = {
            "plain": random_lora(shapes, base_model_id=MODEL, seed=1, scale=0.3),
            "other": random_lora(
                shapes, base_model_id=MODEL, seed=2, scale=0.3, target_modules=targets
            ),
            "generalist": random_lora(shapes, base_model_id=MODEL, seed=3, scale=0.3),
            "gated": random_lora(
                shapes, base_model_id=MODEL, seed=4, scale=0.3, gate_experts=("generalist",)
            ),
        }
        self.lora = MultiLoraModel.wrap(model, num_slots=6, max_rank=4, max_experts=2)
        self.slots = AdapterSlotCache(self.lora, fetch=lambda r: weights[r.adapter_id])
        self.runner = ModelRunner(model, lora=self.lora)

    def lease(self, name: str | None) -> SlotLease | None:
        if name is None:
            return None
        if name == "gated":
            return self.slots.acquire(ExpertSet(MODEL, (GENERALIST,), ref("gated")))
        return self.slots.acquire(ExpertSet(MODEL, specialist=ref(name)))

    def generate(self, experts: list[str | None], steps: int = 3) -> list[torch.Tensor]:
        """Prefill and decode greedily; the logits of every step."""
        prompts = [[3, 1, 4, 1, 5], [2, 7, 1], [9, 9, 8, 2, 4, 4, 3]]
        rows = [
            new_row(self.runner, prompts[i % 3], lease=self.lease(e), adapted=e is not None)
            for i, e in enumerate(experts)
        ]
        prefill = self.runner.prefill(rows)
        self.runner.join(prefill, list(range(len(rows))))
        steps_logits = [prefill.logits]
        for _ in range(steps):
            for row, logits in zip(rows, steps_logits[-1], strict=True):
                row.pending_token = int(logits.argmax())
            steps_logits.append(self.runner.decode(rows).ordered())
        self.runner.reset()
        for row in rows:
            if row.lease is not None:
                row.lease.release()
        return steps_logits


def count_gate_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = MultiLoraLinear._gate_weights

    def counted(self: MultiLoraLinear, *args: Any) -> torch.Tensor:
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(MultiLoraLinear, "_gate_weights", counted)
    return calls


def always_gated(lora: MultiLoraModel) -> Callable[..., AbstractContextManager[Route]]:
    """``lora.routing`` as the engine used it before: gate slots passed even when all 0."""
    layer = next(m for m in lora.model.modules() if isinstance(m, MultiLoraLinear))

    @contextmanager
    def routing(
        expert_slots: list[list[int]], gate_slots: list[int] | None = None, *, check: bool = True
    ) -> Iterator[Route]:
        gates = [0] * len(expert_slots) if gate_slots is None else gate_slots
        route = Route(expert_slots=torch.tensor(expert_slots), gate_slots=torch.tensor(gates))
        previous, layer.routing.current = layer.routing.current, route
        try:
            yield route
        finally:
            layer.routing.current = previous

    return routing


def test_a_batch_without_gates_skips_the_gate_path_with_unchanged_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapted = Adapted()
    experts: list[str | None] = ["plain", None, "other", "plain"]
    calls = count_gate_calls(monkeypatch)
    ungated = adapted.generate(experts)
    assert calls == []  # the gate path never ran
    base = Adapted().runner
    assert not torch.equal(ungated[0][0], base.prefill([new_row(base, [3, 1, 4, 1, 5])]).logits[0])

    monkeypatch.setattr(adapted.lora, "routing", always_gated(adapted.lora))
    gated = adapted.generate(experts)
    assert calls  # the old way: every layer computed gate weights of 1
    for fast, slow in zip(ungated, gated, strict=True):
        assert torch.equal(fast, slow)
    assert adapted.slots.leased_slots() == 0


def test_a_batch_with_one_gated_row_takes_the_gate_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapted = Adapted()
    calls = count_gate_calls(monkeypatch)
    adapted.generate(["plain", "gated", None], steps=1)
    assert calls


def test_routing_with_every_gate_slot_0_routes_without_a_gate() -> None:
    adapted = Adapted()
    plain, gated = adapted.lease("plain"), adapted.lease("gated")
    assert plain is not None and gated is not None and gated.gate_slot != 0
    slots = [[plain.expert_slots[0], 0], list(gated.expert_slots)]
    with adapted.lora.routing(slots, [0, 0]) as route:
        assert route.gate_slots is None
    with adapted.lora.routing(slots, [0, gated.gate_slot]) as route:
        assert route.gate_slots is not None
        assert route.gate_slots.tolist() == [0, gated.gate_slot]


def test_graph_shapes_round_rows_to_buckets_and_columns_to_powers_of_two() -> None:
    assert [row_bucket(n, 256) for n in (1, 2, 3, 5, 64, 65, 256)] == [1, 2, 4, 8, 64, 128, 256]
    assert row_bucket(257, 512) is None  # past the largest bucket: eager
    assert row_bucket(9, 12) is None  # the bucket (16) exceeds the cache's rows: eager
    assert [column_bucket(n, 2048) for n in (1, 64, 65, 129, 2000)] == [64, 64, 128, 256, 2048]
    assert column_bucket(300, 256) == 256


def test_cuda_graphs_asked_for_on_the_cpu_decode_eagerly() -> None:
    model = tiny_llama()
    runner = ModelRunner(model, cuda_graphs=True)
    one = Tracked(runner, [1, 2, 3])
    prefill = runner.prefill([one.row])
    runner.join(prefill, [0])
    check(model, [one], prefill.logits)
    check(model, [one], runner.decode([one.row]).ordered())
    assert runner.graphs_recorded == 0
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        DecodeGraphs(lambda inputs, columns: inputs.tokens, torch.device("cpu"))


def test_scores_are_the_models_log_probabilities_for_the_rows_that_ask() -> None:
    runner = ModelRunner(tiny_llama())
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(1))
    rows = [
        new_row(runner, [1], params=SamplingParams(temperature=0, logprobs=3)),
        new_row(runner, [1]),
        new_row(runner, [1], params=SamplingParams(temperature=0, logprobs=0)),
    ]
    tokens: list[int | RequestFailed] = [5, 6, 7]
    measured = model_runner.scores(rows, Logits.dense(logits), tokens)
    expected = torch.log_softmax(logits, dim=-1)
    first, second, third = measured
    assert first is not None and third is not None and second is None
    assert first.logprob == pytest.approx(float(expected[0, 5]), abs=1e-6)
    assert [t for t, _ in first.top] == expected[0].topk(3).indices.tolist()
    assert [lp for _, lp in first.top] == pytest.approx(expected[0].topk(3).values.tolist())
    assert third.logprob == pytest.approx(float(expected[2, 7]), abs=1e-6) and third.top == ()
    # A row whose token failed has no score.
    failed = model_runner.scores(rows[:1], Logits.dense(logits[:1]), [RequestFailed("no token")])
    assert failed == [None]
