"""The windowed detokenizer against whole-output decoding, with the packaged tokenizers."""

from __future__ import annotations

import random
from typing import Any

import pytest
from transformers import AutoTokenizer

from serving.engine.detokenize import IncrementalDetokenizer, fast_decoder
from tests.server import prepared_model_store

TEXTS = [
    "The Eiffel Tower is in Paris.\n\nIt was built in 1889 — by Gustave Eiffel's company.",
    "Grüße aus Köln! 東京タワーは赤い。 Emoji: 🦜🐉👩‍👩‍👧 and a ligature ﬁ.",
    "def f(x):\n    return x ** 2  # squares\n\n\n    indented   spaces",
]


class CountingDecoder:
    """A tokenizer's decode, counting the tokens it is asked to decode."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens_decoded = 0

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool) -> str:
        self.tokens_decoded += len(token_ids)
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens))


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return AutoTokenizer.from_pretrained(prepared_model_store() / request.param)


def streamed(decoder: CountingDecoder, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(decoder)
    return [*(detokenizer.add(token) for token in ids), detokenizer.flush()]


def test_the_deltas_add_up_to_the_whole_decode(tokenizer: Any) -> None:
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        deltas = streamed(CountingDecoder(tokenizer), ids)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
        # A multi-byte character is shown whole or not yet, never as U+FFFD.
        assert not any("\ufffd" in delta for delta in deltas)


def test_random_token_streams_add_up_too(tokenizer: Any) -> None:
    # Random ids include byte-fallback pieces, special tokens and lone halves
    # of characters: whatever a sampler may produce.
    generator = random.Random(7)
    special = list(tokenizer.all_special_ids)
    for _ in range(20):
        ids = [generator.randrange(tokenizer.vocab_size) for _ in range(60)]
        ids[generator.randrange(60)] = generator.choice(special)
        deltas = streamed(CountingDecoder(tokenizer), ids)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)


def test_decoding_work_grows_with_the_output_not_its_square(tokenizer: Any) -> None:
    ids = tokenizer(" ".join(TEXTS) * 8, add_special_tokens=False)["input_ids"]
    assert len(ids) > 400
    decoder = CountingDecoder(tokenizer)
    streamed(decoder, ids)
    # Whole-output decoding would decode n(n+1)/2 tokens; the windows a few per token.
    assert decoder.tokens_decoded < 12 * len(ids)


def test_the_fast_decoder_is_the_rust_decode_and_gives_the_same_text(tokenizer: Any) -> None:
    fast = fast_decoder(tokenizer)
    assert fast is not tokenizer  # the packaged tokenizers clean up no spaces
    generator = random.Random(11)
    for _ in range(200):
        ids = [generator.randrange(tokenizer.vocab_size) for _ in range(generator.randrange(1, 12))]
        for skip in (True, False):
            assert fast.decode(ids, skip_special_tokens=skip) == tokenizer.decode(
                ids, skip_special_tokens=skip
            )
    deltas = streamed(
        CountingDecoder(fast), tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    )
    assert "".join(deltas) == TEXTS[1]


def test_a_tokenizer_that_cleans_up_spaces_keeps_its_own_decode() -> None:
    cleaning: Any = AutoTokenizer.from_pretrained(
        prepared_model_store() / "smollm2-135m-instruct", clean_up_tokenization_spaces=True
    )
    assert fast_decoder(cleaning) is cleaning
