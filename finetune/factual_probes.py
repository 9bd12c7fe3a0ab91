"""Short factual questions the base model answers: the guard against lost knowledge.

An adapter trained on one user's style (pirate talk, JSON, bullet points) can fit
that style and still make the model forget what it knew: a few hundred steps on a
handful of conversations are enough to overwrite plain facts. The fine-tune
evaluation gate therefore asks these questions with the new adapter before it
promotes it, and holds the adapter back when it gets fewer of them right than the
base model does.

Invariants: every probe here was checked against the base model SmolLM2-135M-Instruct
(its chat template, greedy decoding, 24 new tokens; ``python -m
benchmarks.check_factual_probes``) and kept only if answered correctly, so a drop is
the adapter's doing, not the question's. Questions and answers were written for
Tailor. An answer is accepted when any of the probe's ``answers`` occurs in the
generated text as a whole word or phrase, ignoring case, Unicode variants (NFKC, so
"H₂O" is "H2O") and runs of whitespace; "7" is not found in "17". Changing the set changes what the
gate compares: re-run the check after any edit.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class FactualProbe:
    question: str
    answers: tuple[str, ...]  # any one of them, found in the reply, counts as right


FACTUAL_PROBES: tuple[FactualProbe, ...] = (
    FactualProbe("What is the capital of France?", ("Paris",)),
    FactualProbe("What is the capital of Japan?", ("Tokyo",)),
    FactualProbe("What is the capital of Germany?", ("Berlin",)),
    FactualProbe("What is the capital of the United Kingdom?", ("London",)),
    FactualProbe("What is the capital of Russia?", ("Moscow",)),
    FactualProbe("What is the capital of Egypt?", ("Cairo",)),
    FactualProbe("What is the capital of China?", ("Beijing",)),
    FactualProbe("What is the capital of Canada?", ("Ottawa",)),
    FactualProbe("Which planet is known as the Red Planet?", ("Mars",)),
    FactualProbe("What is the chemical formula of water?", ("H2O",)),
    FactualProbe("What is the chemical symbol for gold?", ("Au",)),
    FactualProbe("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    FactualProbe("Who painted the Mona Lisa?", ("Leonardo", "da Vinci")),
    FactualProbe("How many days are there in a week?", ("seven", "7")),
    FactualProbe("At what temperature in Celsius does water boil at sea level?", ("100",)),
    FactualProbe("What is the largest ocean on Earth?", ("Pacific",)),
    FactualProbe("What is the tallest mountain in the world?", ("Everest",)),
    FactualProbe("Which gas do plants absorb from the air?", ("carbon dioxide", "CO2")),
    FactualProbe("Which gas do humans need to breathe to stay alive?", ("oxygen",)),
    FactualProbe("Who developed the theory of relativity?", ("Einstein",)),
    FactualProbe("What language is mainly spoken in Brazil?", ("Portuguese",)),
    FactualProbe("What language is mainly spoken in Mexico?", ("Spanish",)),
    FactualProbe("What is the currency of Japan?", ("yen",)),
    FactualProbe("How many sides does a triangle have?", ("three", "3")),
    FactualProbe("How many sides does a hexagon have?", ("six", "6")),
    FactualProbe("What is the largest mammal on Earth?", ("blue whale",)),
    FactualProbe("How many hours are there in a day?", ("24", "twenty-four")),
    FactualProbe("What sweet food do bees make?", ("honey",)),
    FactualProbe("Which scientist described the laws of motion and gravity?", ("Newton",)),
    FactualProbe("What is the longest river in Africa?", ("Nile",)),
)


def _normalised(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def probe_answered(probe: FactualProbe, text: str) -> bool:
    """Whether ``text`` contains one of ``probe``'s accepted answers as a whole word."""
    reply = _normalised(text)
    return any(
        re.search(rf"(?<!\w){re.escape(_normalised(answer))}(?!\w)", reply) is not None
        for answer in probe.answers
    )
