"""The batched sampler alone: temperature, nucleus and the draw, against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from serving.engine.sampling import NUCLEUS_CANDIDATES, SamplingParams, draw, sample_rows


def grid(n: int) -> list[float]:
    """``n`` uniforms spread evenly over [0, 1): each token is drawn n * p times, +-1."""
    return [(k + 0.5) / n for k in range(n)]


def nucleus_by_definition(probabilities: torch.Tensor, top_p: float) -> torch.Tensor:
    """The smallest prefix by falling probability whose mass reaches top_p, renormalised."""
    order = probabilities.argsort(descending=True).tolist()
    kept = torch.zeros_like(probabilities)
    mass = 0.0
    for token in order:
        if mass >= top_p:
            break
        kept[token] = probabilities[token]
        mass += float(probabilities[token])
    return kept / kept.sum()


def frequencies(logits: torch.Tensor, params: SamplingParams, n: int) -> torch.Tensor:
    rows = logits.unsqueeze(0).expand(n, -1)
    tokens = sample_rows(rows, [params] * n, grid(n))
    return torch.bincount(torch.tensor(tokens), minlength=logits.shape[0]).double() / n


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (0.2, 0.5), (1.3, 0.3)])
def test_draws_follow_the_tempered_nucleus(temperature: float, top_p: float) -> None:
    logits = torch.randn(40, generator=torch.Generator().manual_seed(3)) * 2
    expected = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        expected = nucleus_by_definition(expected, top_p)
    n = 4000
    got = frequencies(logits, SamplingParams(temperature=temperature, top_p=top_p), n)
    assert torch.allclose(got, expected, atol=1.5 / n)
    assert bool(((got > 0) <= (expected > 0)).all())  # nothing outside the nucleus


def test_a_nucleus_beyond_the_candidates_is_found_by_the_full_sort() -> None:
    # A flat distribution over many tokens: the nucleus of 0.9 holds about 90%
    # of them, far more than NUCLEUS_CANDIDATES.
    vocab = NUCLEUS_CANDIDATES * 8
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(5)) * 0.1
    params = SamplingParams(temperature=1.0, top_p=0.9)
    expected = nucleus_by_definition(torch.softmax(logits.double(), dim=-1), 0.9)
    assert int((expected > 0).sum()) > NUCLEUS_CANDIDATES
    n = 20000
    got = frequencies(logits, params, n)
    assert torch.allclose(got, expected, atol=1.5 / n)
    # And beside a peaked row whose nucleus lies within the candidates, in one batch.
    peaked = torch.full((vocab,), -10.0)
    peaked[7] = 10.0
    both = torch.stack([peaked, logits])
    assert sample_rows(both, [params, params], [0.999, 0.5])[0] == 7


def test_top_p_one_keeps_every_token_however_unlikely() -> None:
    logits = torch.zeros(1000)
    logits[0] = 12.0  # about 99.4% of the mass
    got = frequencies(logits, SamplingParams(temperature=1.0, top_p=1.0), 100_000)
    tail = 1.0 - float(torch.softmax(logits.double(), dim=-1)[0])
    assert math.isclose(float(got[1:].sum()), tail, abs_tol=2e-5)
    assert int((got[1:] > 0).sum()) > 400  # the tail is spread, not cut


def test_zero_probability_tokens_are_never_drawn_even_at_the_edges() -> None:
    logits = torch.tensor([0.0, 5.0, 0.0, 4.9, 0.0])
    params = SamplingParams(temperature=1.0, top_p=0.4)  # the nucleus is token 1 alone
    edges = [0.0, 0.5, 1.0 - 1e-12, 1.0 - 1e-300]
    assert sample_rows(logits.expand(4, -1), [params] * 4, edges) == [1, 1, 1, 1]
    # Without a nucleus the last token of positive probability takes the top edge.
    logits = torch.tensor([5.0, 0.0, -math.inf, -math.inf])
    every = SamplingParams(temperature=1.0, top_p=1.0)
    assert sample_rows(logits.expand(2, -1), [every] * 2, [0.0, 1.0 - 1e-12]) == [0, 1]


def test_a_tiny_temperature_is_greedy_not_nan() -> None:
    logits = torch.tensor([1.0, 3.0, 2.9, -50.0]).expand(3, -1)
    params = SamplingParams(temperature=1e-6, top_p=1.0)
    assert sample_rows(logits, [params] * 3, [0.0, 0.5, 0.999999]) == [1, 1, 1]


def test_a_row_draws_the_same_token_alone_and_in_any_batch() -> None:
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 300, generator=generator)
    params = [
        SamplingParams(temperature=t, top_p=p)
        for t, p in [(0.2, 0.9), (1.0, 1.0), (0.7, 0.5), (1.5, 0.95), (0.9, 0.8), (0.3, 1.0)]
    ]
    uniforms = [draw(torch.Generator().manual_seed(i)) for i in range(6)]
    batch = sample_rows(logits, params, uniforms)
    alone = [sample_rows(logits[i : i + 1], [params[i]], [uniforms[i]])[0] for i in range(6)]
    reversed_batch = sample_rows(logits.flip(0), params[::-1], uniforms[::-1])[::-1]
    assert batch == alone == reversed_batch


def test_a_seeded_generator_draws_the_same_numbers() -> None:
    first = [draw(torch.Generator().manual_seed(42)) for _ in range(2)]
    assert first[0] == first[1] and 0.0 <= first[0] < 1.0
    generator = torch.Generator().manual_seed(42)
    assert draw(generator) != draw(generator)  # a step's number is not the next step's


def test_mismatched_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="one SamplingParams and one uniform per row"):
        sample_rows(torch.zeros(2, 5), [SamplingParams()], [0.5, 0.5])
