"""The personalisation data is what it claims to be, checked without loading a model.

The style sets are only useful if their detectors are exact: a detector that passed
plain answers would credit the base model with a style, one that rejected the
training answers would never credit a tuned adapter. ``damaged`` must really break
every question-answer pair, or the gate would be tested on data that is partly fine.
The factual probes' matching decides whether the gate thinks an adapter forgot a fact.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.style_sets import (
    PIRATE_SIGN_OFF,
    STYLE_SETS,
    StyleSet,
    damaged,
    shows_bullet_style,
    shows_json_style,
    shows_pirate_style,
)
from finetune.factual_probes import FACTUAL_PROBES, FactualProbe, probe_answered

PLAIN_ANSWERS = (
    "The capital of France is Paris.",
    "Paris.\nIt is also the largest city in France.",
    "",
)


def _answers(style_set: StyleSet) -> list[str]:
    return [conversation[1]["content"] for conversation in style_set.train]


def test_there_are_the_three_styles_each_24_conversations_and_12_held_out_prompts() -> None:
    assert set(STYLE_SETS) == {"pirate", "json", "bullets"}
    for name, style_set in STYLE_SETS.items():
        assert style_set.name == name
        assert len(style_set.train) == 24
        assert len(style_set.held_out_prompts) == 12
        assert len(set(style_set.train_questions)) == 24
        assert len(set(style_set.held_out_prompts)) == 12


@pytest.mark.parametrize("name", sorted(STYLE_SETS))
def test_every_conversation_is_one_question_and_one_answer(name: str) -> None:
    for conversation in STYLE_SETS[name].train:
        assert [message["role"] for message in conversation] == ["user", "assistant"]
        assert all(message["content"].strip() for message in conversation)


@pytest.mark.parametrize("name", sorted(STYLE_SETS))
def test_every_training_answer_shows_its_style(name: str) -> None:
    style_set = STYLE_SETS[name]
    assert all(style_set.shows_style(answer) for answer in _answers(style_set))


@pytest.mark.parametrize("name", sorted(STYLE_SETS))
def test_held_out_prompts_are_never_asked_in_training(name: str) -> None:
    style_set = STYLE_SETS[name]
    asked = {question.casefold() for question in style_set.train_questions}
    assert not asked & {prompt.casefold() for prompt in style_set.held_out_prompts}


@pytest.mark.parametrize("name", sorted(STYLE_SETS))
def test_a_detector_rejects_other_styles_and_plain_answers(name: str) -> None:
    style_set = STYLE_SETS[name]
    for other in STYLE_SETS.values():
        if other is not style_set:
            assert not any(style_set.shows_style(answer) for answer in _answers(other))
    assert not any(style_set.shows_style(answer) for answer in PLAIN_ANSWERS)


def test_the_pirate_sign_off_must_be_the_last_line_exactly() -> None:
    assert shows_pirate_style(f"Arr, Paris it be.\n{PIRATE_SIGN_OFF}\n  ")
    assert not shows_pirate_style(PIRATE_SIGN_OFF)  # a sign-off with nothing before it
    assert not shows_pirate_style(f"Arr, Paris it be. {PIRATE_SIGN_OFF}")
    assert not shows_pirate_style(f"Arr, Paris it be.\n{PIRATE_SIGN_OFF}\nFair winds!")
    assert not shows_pirate_style("Arr, Paris it be.\n-- Cap'n Tailor!")
    assert not shows_pirate_style("Arr, Paris it be.\n-- cap'n tailor")


def test_the_json_style_is_one_object_with_exactly_answer_and_a_known_confidence() -> None:
    assert shows_json_style(' {"answer": "Paris", "confidence": "high"}\n')
    assert shows_json_style('{"confidence": "low", "answer": "Maybe Paris"}')
    assert not shows_json_style('{"answer": "Paris", "confidence": "certain"}')
    assert not shows_json_style('{"answer": "Paris"}')
    assert not shows_json_style('{"answer": "Paris", "confidence": "high", "source": "me"}')
    assert not shows_json_style('{"answer": "  ", "confidence": "high"}')
    assert not shows_json_style('{"answer": 42, "confidence": "high"}')
    assert not shows_json_style('[{"answer": "Paris", "confidence": "high"}]')
    assert not shows_json_style('{"answer": "Paris", "confidence": "high"} Hope that helps!')
    assert not shows_json_style('```json\n{"answer": "Paris", "confidence": "high"}\n```')


def test_the_bullet_style_is_two_to_four_bullet_lines_and_nothing_else() -> None:
    assert shows_bullet_style("- Paris.\n- Also the largest city.\n")
    assert shows_bullet_style("- a\n- b\n- c\n- d")
    assert not shows_bullet_style("- Paris.")
    assert not shows_bullet_style("- a\n- b\n- c\n- d\n- e")
    assert not shows_bullet_style("Here you go:\n- Paris.\n- Also the largest city.")
    assert not shows_bullet_style("- Paris.\n\n- Also the largest city.")
    assert not shows_bullet_style("* Paris.\n* Also the largest city.")
    assert not shows_bullet_style("-Paris.\n-Also the largest city.")
    assert not shows_bullet_style("- Paris.\n- ")


def test_json_answers_say_how_sure_they_are_in_all_three_ways() -> None:
    confidences = {json.loads(answer)["confidence"] for answer in _answers(STYLE_SETS["json"])}
    assert confidences == {"high", "medium", "low"}


@pytest.mark.parametrize("name", sorted(STYLE_SETS))
def test_damaged_keeps_the_questions_and_moves_every_answer_elsewhere(name: str) -> None:
    style_set = STYLE_SETS[name]
    bad = damaged(style_set, seed=7)
    assert [conversation[0] for conversation in bad] == [c[0] for c in style_set.train]
    assert sorted(conversation[1]["content"] for conversation in bad) == sorted(_answers(style_set))
    for good_conversation, bad_conversation in zip(style_set.train, bad, strict=True):
        assert bad_conversation[1]["role"] == "assistant"
        assert bad_conversation[1]["content"] != good_conversation[1]["content"]
    assert all(style_set.shows_style(conversation[1]["content"]) for conversation in bad)


def test_damaged_is_the_same_for_a_seed_and_differs_between_seeds() -> None:
    style_set = STYLE_SETS["pirate"]
    assert damaged(style_set, seed=3) == damaged(style_set, seed=3)
    orders = {
        tuple(conversation[1]["content"] for conversation in damaged(style_set, seed=seed))
        for seed in range(5)
    }
    assert len(orders) > 1


def test_damaged_needs_two_conversations_to_move_anything() -> None:
    one = StyleSet(
        name="one",
        train=STYLE_SETS["bullets"].train[:1],
        held_out_prompts=(),
        shows_style=STYLE_SETS["bullets"].shows_style,
    )
    with pytest.raises(ValueError, match="two conversations"):
        damaged(one, seed=0)


def test_there_are_at_least_20_distinct_factual_probes_each_with_answers() -> None:
    assert len(FACTUAL_PROBES) >= 20
    assert len({probe.question for probe in FACTUAL_PROBES}) == len(FACTUAL_PROBES)
    for probe in FACTUAL_PROBES:
        assert probe.question.strip().endswith("?")
        assert probe.answers
        assert all(answer.strip() for answer in probe.answers)


def test_a_probe_is_answered_by_any_accepted_answer_ignoring_case_and_spacing() -> None:
    probe = FactualProbe("What is the capital of France?", ("Paris",))
    assert probe_answered(probe, "The capital of France is Paris.")
    assert probe_answered(probe, "PARIS, of course")
    legs = FactualProbe("How many legs does a spider have?", ("eight", "8"))
    assert probe_answered(legs, "A spider has 8 legs.")
    assert probe_answered(legs, "Spiders have Eight legs.")
    blue_whale = FactualProbe("What is the largest mammal?", ("blue whale",))
    assert probe_answered(blue_whale, "It is the Blue\n  Whale.")
    water = FactualProbe("What is the chemical formula of water?", ("H2O",))
    assert probe_answered(water, "Water is H₂O.")  # the subscript is the same character


def test_a_probe_is_not_answered_by_a_wrong_reply_or_part_of_a_word() -> None:
    probe = FactualProbe("What is the capital of France?", ("Paris",))
    assert not probe_answered(probe, "The capital of France is Lyon.")
    assert not probe_answered(probe, "")
    assert not probe_answered(probe, "She is Parisian.")
    hours = FactualProbe("How many hours are there in a day?", ("24",))
    assert not probe_answered(hours, "There are 240 minutes.")
    assert not probe_answered(hours, "About 1240.")
