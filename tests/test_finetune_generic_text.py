"""The generic text set of the fine-tune gate: 40 distinct passages of 60-120 words."""

from __future__ import annotations

from finetune.generic_text import GENERIC_TEXTS, generic_texts


def test_forty_passages() -> None:
    assert isinstance(GENERIC_TEXTS, tuple)
    assert len(GENERIC_TEXTS) == 40
    assert all(isinstance(text, str) for text in GENERIC_TEXTS)


def test_each_passage_has_60_to_120_words() -> None:
    for index, text in enumerate(GENERIC_TEXTS):
        words = len(text.split())
        assert 60 <= words <= 120, f"passage {index} has {words} words"


def test_passages_are_distinct() -> None:
    assert len(set(GENERIC_TEXTS)) == len(GENERIC_TEXTS)


def test_no_passage_is_part_of_another() -> None:
    for i, text in enumerate(GENERIC_TEXTS):
        for j, other in enumerate(GENERIC_TEXTS):
            if i != j:
                assert text not in other, f"passage {i} lies inside passage {j}"


def test_passages_are_clean() -> None:
    for index, text in enumerate(GENERIC_TEXTS):
        assert text == text.strip(), f"passage {index} has surrounding whitespace"
        assert "  " not in text, f"passage {index} has a double space"


def test_generic_texts_returns_a_copy() -> None:
    texts = generic_texts()
    assert texts == list(GENERIC_TEXTS)
    texts.clear()
    assert len(generic_texts()) == 40
