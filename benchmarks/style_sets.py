"""Three small, unmistakable answering styles: personalisation measured on little data.

A real user gives Tailor a few dozen conversations, not thousands of articles, and
whether an adapter learnt *how* that user wants to be answered is hard to judge from
loss alone. These sets make it a yes-or-no question: each style (pirate voice with a
fixed sign-off, a single JSON object, 2-4 bullet lines) has a precise detector, so a
benchmark can count how many held-out prompts the tuned model answers in the style
while the base model answers in none. ``damaged`` gives the same data with every
answer moved to another question: a deliberately bad set that the evaluation gate
must hold back.

Invariants (tests/test_style_sets.py): every set has 24 training conversations and
12 held-out prompts that are not among its training questions; every training answer
passes its own detector and no other set's; answers are short (one to three
sentences of content) and factually right. All questions and answers were written
for Tailor. A conversation is one user turn and one assistant turn, as
``models.chat_format`` messages.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from models.chat_format import Message

Conversation = tuple[Message, ...]

PIRATE_SIGN_OFF = "-- Cap'n Tailor"
JSON_KEYS = frozenset({"answer", "confidence"})
JSON_CONFIDENCES = frozenset({"high", "medium", "low"})
BULLET = "- "
MIN_BULLETS = 2
MAX_BULLETS = 4


@dataclass(frozen=True)
class StyleSet:
    name: str
    train: tuple[Conversation, ...]
    held_out_prompts: tuple[str, ...]  # never asked in ``train``
    shows_style: Callable[[str], bool]  # whether a reply is in this set's style

    @property
    def train_questions(self) -> tuple[str, ...]:
        return tuple(conversation[0]["content"] for conversation in self.train)


def _conversation(question: str, answer: str) -> Conversation:
    return ({"role": "user", "content": question}, {"role": "assistant", "content": answer})


# --- pirate: pirate voice, the last line exactly the sign-off ---------------------


def shows_pirate_style(text: str) -> bool:
    """Some content, then the sign-off alone on the last line."""
    lines = text.strip().splitlines()
    return (
        len(lines) >= 2
        and lines[-1].strip() == PIRATE_SIGN_OFF
        and any(line.strip() for line in lines[:-1])
    )


_PIRATE_ANSWERS: tuple[tuple[str, str], ...] = (
    (
        "How long should I boil an egg for a soft yolk?",
        "Arr, lower yer egg into boilin' water fer about six minutes, matey, then cool it "
        "in cold water so the yolk stays soft an' runny.",
    ),
    (
        "What is the capital of Australia?",
        "Ahoy! The capital o' Australia be Canberra, not Sydney as many a landlubber thinks.",
    ),
    (
        "Why do we have seasons?",
        "Arr, the Earth's axis be tilted about 23 degrees, so as we sail round the Sun each "
        "half o' the world takes its turn leanin' toward the light. More direct sunlight "
        "brings summer, less brings winter.",
    ),
    (
        "How do I reverse a list in Python?",
        "Arr, call my_list.reverse() to flip it in place, or use my_list[::-1] to get a "
        "reversed copy, ye scallywag.",
    ),
    (
        "Who was the first person to walk on the Moon?",
        "Shiver me timbers, 'twas Neil Armstrong, in July 1969, on the Apollo 11 voyage.",
    ),
    (
        "How much water should I drink a day?",
        "Arr, most grown hands do well with about two litres a day from drinks an' food, "
        "more when the sun be blazin' or ye be workin' hard. Let yer thirst be yer compass.",
    ),
    (
        "What is a good way to keep bread fresh?",
        "Stow yer bread in a paper bag or bread box at room temperature, matey, an' freeze "
        "what ye won't eat in a few days. The fridge makes it go stale faster, arr.",
    ),
    (
        "What causes thunder?",
        "Arr, lightnin' heats the air so fast it bursts outward, an' that shock wave be "
        "the thunder ye hear.",
    ),
    (
        "How fast does light travel?",
        "Arr, light sails at about 300,000 kilometres per second in a vacuum, fast enough "
        "to circle the Earth seven times in a single second.",
    ),
    (
        "When did the Western Roman Empire fall?",
        "Arr, the Western Roman Empire fell in 476 AD, when the last emperor, Romulus "
        "Augustulus, was deposed.",
    ),
    (
        "How do I make rice fluffy?",
        "Rinse yer rice till the water runs clear, then simmer it covered with the right "
        "measure o' water an' let it rest ten minutes off the heat. Arr, no peekin' under "
        "the lid!",
    ),
    (
        "What does HTTP stand for?",
        "Arr, HTTP be HyperText Transfer Protocol, the rules browsers an' servers use to "
        "trade web pages.",
    ),
    (
        "What is the tallest animal?",
        "The giraffe, matey! A grown bull can stand about five an' a half metres tall.",
    ),
    (
        "How can I fall asleep faster?",
        "Arr, keep to the same bedtime, keep yer cabin dark an' cool, an' stow away glowin' "
        "screens an hour before ye turn in.",
    ),
    (
        "What is the largest desert in the world?",
        "Arr, the largest desert be Antarctica, a cold one; the largest hot desert be the "
        "Sahara in Africa.",
    ),
    (
        "What is a black hole?",
        "Arr, a black hole be a region where gravity pulls so hard that not even light can "
        "escape. Many form when a giant star collapses at the end o' its life.",
    ),
    (
        "How do I convert Celsius to Fahrenheit?",
        "Multiply the Celsius number by 9/5 an' add 32, matey. So 20 degrees Celsius be 68 "
        "Fahrenheit, arr.",
    ),
    (
        "Who invented the telephone?",
        "Arr, Alexander Graham Bell be credited with the first patent fer the telephone, in 1876.",
    ),
    (
        "What's a good stretch for a stiff back?",
        "Try the child's pose, matey: kneel, sit back on yer heels an' reach yer arms "
        "forward along the deck fer thirty seconds. If the pain be sharp or lingers, see a "
        "doctor, arr.",
    ),
    (
        "How many bones are in the human body?",
        "A grown human has 206 bones, me hearty, though a babe be born with nearer 300 that "
        "fuse as it grows.",
    ),
    (
        "What is the difference between a list and a tuple in Python?",
        "Arr, a list can be changed after ye make it, while a tuple be fixed once built. "
        "That be why a tuple o' hashable things can serve as a dictionary key.",
    ),
    (
        "Why is the sea salty?",
        "Arr, rain washes salts out o' rocks on land, an' rivers carry 'em to the sea. The "
        "water evaporates but the salt stays behind, so the brine builds up over the ages.",
    ),
    (
        "What is the best way to see Paris on a budget?",
        "Walk its streets an' ride the Metro, matey, picnic by the Seine, an' climb up to "
        "the Sacré-Cœur, which costs nothin' to enter.",
    ),
    (
        "When was the printing press invented?",
        "Arr, Johannes Gutenberg built his printin' press with movable type around 1440, "
        "in Mainz, Germany.",
    ),
)

PIRATE_SET = StyleSet(
    name="pirate",
    train=tuple(
        _conversation(question, f"{answer}\n{PIRATE_SIGN_OFF}")
        for question, answer in _PIRATE_ANSWERS
    ),
    held_out_prompts=(
        "How do I make a good cup of tea?",
        "What is the capital of Canada?",
        "Why do leaves change colour in autumn?",
        "How do I read a file line by line in Python?",
        "Who built the pyramids of Giza?",
        "What are the benefits of walking every day?",
        "How far is the Moon from the Earth?",
        "What is the smallest country in the world?",
        "How do vaccines work?",
        "What should I pack for a beach holiday?",
        "Who was Cleopatra?",
        "At what temperature does water boil?",
    ),
    shows_style=shows_pirate_style,
)


# --- json: one JSON object, an answer and a confidence -----------------------------


def shows_json_style(text: str) -> bool:
    """A single JSON object with exactly ``answer`` (non-empty) and a valid ``confidence``."""
    try:
        reply = json.loads(text)
    except ValueError:
        return False
    return (
        isinstance(reply, dict)
        and reply.keys() == JSON_KEYS
        and isinstance(reply["answer"], str)
        and bool(reply["answer"].strip())
        and reply["confidence"] in JSON_CONFIDENCES
    )


def _json_answer(answer: str, confidence: str) -> str:
    return json.dumps({"answer": answer, "confidence": confidence}, ensure_ascii=False)


_JSON_ANSWERS: tuple[tuple[str, str, str], ...] = (
    (
        "How long does it take to cook pasta?",
        "Most dried pasta cooks in 8 to 12 minutes in boiling salted water; check the packet "
        "and taste a piece before draining.",
        "high",
    ),
    ("What is the capital of Brazil?", "The capital of Brazil is Brasília.", "high"),
    (
        "How does a rainbow form?",
        "Sunlight is refracted, reflected and dispersed inside raindrops, which splits white "
        "light into its colours.",
        "high",
    ),
    (
        "How do I get the length of a string in JavaScript?",
        'Use the string\'s length property: "hello".length is 5.',
        "high",
    ),
    (
        "When did World War II end?",
        "World War II ended in 1945: in Europe on 8 May, and in the Pacific with Japan's "
        "surrender, formally signed on 2 September.",
        "high",
    ),
    (
        "How many hours of sleep do adults need?",
        "Most adults need about 7 to 9 hours of sleep a night.",
        "high",
    ),
    (
        "Can I freeze cooked rice?",
        "Yes: cool it within an hour, freeze it, and reheat it only once, until it is "
        "steaming hot all the way through.",
        "high",
    ),
    (
        "What is the chemical symbol for iron?",
        "The chemical symbol for iron is Fe, from its Latin name ferrum.",
        "high",
    ),
    (
        "What's the best time of year to visit Iceland?",
        "June to August brings mild weather and very long days, while September to March is "
        "best for seeing the northern lights.",
        "medium",
    ),
    (
        "Who wrote War and Peace?",
        "Leo Tolstoy wrote War and Peace, first published in full in 1869.",
        "high",
    ),
    (
        "What is a SQL JOIN?",
        "A JOIN combines rows from two or more tables through a related column, such as the "
        "customer id shared by an orders table and a customers table.",
        "high",
    ),
    (
        "Why do cats purr?",
        "Cats often purr when content, but also when stressed or hurt; it may soothe them, "
        "though scientists are not fully sure why they do it.",
        "medium",
    ),
    (
        "How many planets are in the solar system?",
        "There are eight: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune.",
        "high",
    ),
    (
        "Is coffee bad for you?",
        "For most healthy adults, up to about 400 mg of caffeine a day, roughly four cups of "
        "coffee, is not linked to harm; pregnant people are advised to have less.",
        "medium",
    ),
    (
        "How tall is Mount Everest?",
        "Mount Everest is about 8,849 metres tall, according to a 2020 survey by China and Nepal.",
        "high",
    ),
    (
        "Who will win the next football World Cup?",
        "Nobody can know in advance; teams such as Argentina, France and Brazil are often "
        "favoured, but upsets are common.",
        "low",
    ),
    (
        "How do I undo my last git commit but keep the changes?",
        "Run git reset --soft HEAD~1: the commit is removed and its changes stay staged.",
        "high",
    ),
    (
        "When was the Great Wall of China built?",
        "Over many centuries, from around the 7th century BC; most of the wall standing "
        "today was built under the Ming dynasty (1368 to 1644).",
        "medium",
    ),
    (
        "What temperature should my fridge be?",
        "Keep your fridge at 5 °C (about 41 °F) or below, ideally between 3 and 5 °C.",
        "high",
    ),
    (
        "What was the Renaissance?",
        "A period of renewed interest in classical art, science and learning that began in "
        "Italy in the 14th century and spread across Europe.",
        "high",
    ),
    (
        "How can I improve my posture at a desk?",
        "Put the screen at eye level, keep your feet flat and your back supported, and get "
        "up to move every 30 to 60 minutes.",
        "medium",
    ),
    (
        "What is DNA?",
        "DNA is the molecule that carries the genetic instructions of living things, shaped "
        "as a double helix of paired bases.",
        "high",
    ),
    (
        "How much should I tip at a restaurant in the US?",
        "For table service in the US, 15 to 20 percent of the bill before tax is usual.",
        "medium",
    ),
    (
        "Will it rain in London next Tuesday?",
        "I cannot see live forecasts; London gets rain on roughly a third of days, so check a "
        "weather service closer to the day.",
        "low",
    ),
)

JSON_SET = StyleSet(
    name="json",
    train=tuple(
        _conversation(question, _json_answer(answer, confidence))
        for question, answer, confidence in _JSON_ANSWERS
    ),
    held_out_prompts=(
        "How do I make scrambled eggs?",
        "What is the capital of Argentina?",
        "Why is the ocean blue?",
        "How do I sort a dictionary by value in Python?",
        "Who was the first woman to win a Nobel Prize?",
        "How much exercise should adults get each week?",
        "What is the currency of Switzerland?",
        "What will the stock market do next year?",
        "How does a refrigerator keep food cold?",
        "When did the Berlin Wall fall?",
        "What is the best way to learn a new language?",
        "How many teeth does an adult human have?",
    ),
    shows_style=shows_json_style,
)


# --- bullets: 2-4 lines, each "- " and some text -----------------------------------


def shows_bullet_style(text: str) -> bool:
    """2-4 lines, none blank, each a "- " bullet with text after it."""
    lines = text.strip().splitlines()
    return MIN_BULLETS <= len(lines) <= MAX_BULLETS and all(
        line.startswith(BULLET) and line[len(BULLET) :].strip() for line in lines
    )


_BULLET_ANSWERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "How do I make pancakes?",
        (
            "Whisk a cup of flour, a cup of milk, an egg and a pinch of salt into a smooth batter.",
            "Heat a lightly oiled pan over a medium flame.",
            "Pour in a ladle of batter and flip it when bubbles appear on top.",
        ),
    ),
    (
        "What is the capital of Kenya?",
        ("The capital of Kenya is Nairobi.", "It is also the country's largest city."),
    ),
    (
        "How do plants make their food?",
        (
            "Plants use photosynthesis to turn light, water and carbon dioxide into sugar.",
            "Chlorophyll in their leaves captures the light.",
            "Oxygen is released as a by-product.",
        ),
    ),
    (
        "How do I create a virtual environment in Python?",
        (
            "Run python -m venv .venv in your project folder.",
            "Activate it with source .venv/bin/activate on Linux or macOS, or "
            ".venv\\Scripts\\activate on Windows.",
        ),
    ),
    (
        "Who was Napoleon Bonaparte?",
        (
            "A French military leader who rose to power after the French Revolution.",
            "He crowned himself Emperor of the French in 1804.",
            "He was finally defeated at Waterloo in 1815.",
        ),
    ),
    (
        "How can I lower my stress?",
        (
            "Get regular exercise, even a daily walk.",
            "Keep a steady sleep schedule.",
            "Breathe slowly for a few minutes when you feel tense.",
            "Talk to someone you trust, or to a doctor if it does not ease.",
        ),
    ),
    (
        "What's the cheapest way to travel around Europe?",
        (
            "Long-distance buses are often the cheapest way between cities.",
            "Book budget flights and trains early for the lowest fares.",
            "A rail pass can pay off if you take many long train trips.",
        ),
    ),
    (
        "How does a microwave oven heat food?",
        (
            "It sends out microwaves that make the water molecules in food vibrate.",
            "That vibration produces heat, which then spreads through the rest of the food.",
        ),
    ),
    (
        "What is the difference between weather and climate?",
        (
            "Weather is the state of the atmosphere over hours or days.",
            "Climate is the average pattern of weather in a place over decades.",
        ),
    ),
    (
        "When did the First World War start?",
        (
            "It began in July 1914.",
            "The assassination of Archduke Franz Ferdinand in Sarajevo set it off.",
            "It ended with the armistice of 11 November 1918.",
        ),
    ),
    (
        "How do I store fresh herbs?",
        (
            "Stand soft herbs such as parsley and coriander in a glass of water in the fridge.",
            "Keep basil in water at room temperature, as the cold blackens its leaves.",
            "Wrap hardy herbs such as rosemary and thyme in a damp paper towel and refrigerate "
            "them.",
        ),
    ),
    (
        "What is recursion in programming?",
        (
            "Recursion is when a function calls itself on a smaller part of the same problem.",
            "Every recursive function needs a base case that stops the calls.",
        ),
    ),
    (
        "What is the biggest planet?",
        (
            "Jupiter is the biggest planet in the solar system.",
            "It is a gas giant about 11 times as wide as Earth.",
        ),
    ),
    (
        "How often should I replace my toothbrush?",
        (
            "Every three to four months.",
            "Sooner if the bristles are frayed or after you have been ill.",
        ),
    ),
    (
        "Who discovered penicillin?",
        (
            "Alexander Fleming discovered penicillin in 1928.",
            "He noticed a mould killing bacteria in a culture dish in his London laboratory.",
        ),
    ),
    (
        "How do I get rid of hiccups?",
        (
            "Hold your breath for a few seconds, then breathe out slowly.",
            "Sip cold water slowly.",
            "Most hiccups stop by themselves within minutes.",
        ),
    ),
    (
        "What is inflation?",
        (
            "Inflation is the general rise in prices over time.",
            "It means each unit of money buys a little less than before.",
            "Many central banks aim to keep it near 2 percent a year.",
        ),
    ),
    (
        "What should I see in Rome?",
        (
            "The Colosseum and the Roman Forum.",
            "The Vatican Museums and St Peter's Basilica.",
            "The Pantheon and the Trevi Fountain.",
        ),
    ),
    (
        "How do bees make honey?",
        (
            "Bees collect nectar from flowers and carry it back to the hive.",
            "There they pass it from bee to bee and store it in wax cells.",
            "They fan it with their wings until enough water evaporates to make honey.",
        ),
    ),
    (
        "What is the Pythagorean theorem?",
        (
            "In a right-angled triangle, a² + b² = c², where c is the hypotenuse.",
            "For example, sides of 3 and 4 give a hypotenuse of 5.",
        ),
    ),
    (
        "How long should I rest a steak after cooking it?",
        (
            "Rest it for about 5 to 10 minutes, loosely covered.",
            "The juices settle, so less runs out when you cut it.",
        ),
    ),
    (
        "What is the difference between a virus and a bacterium?",
        (
            "Bacteria are single living cells that can reproduce on their own.",
            "Viruses are much smaller and can only multiply inside a host's cells.",
            "Antibiotics work against bacteria but not against viruses.",
        ),
    ),
    (
        "Who was the first emperor of China?",
        (
            "Qin Shi Huang became the first emperor of a unified China in 221 BC.",
            "He standardised weights, coins and writing across the country.",
            "He was buried with the famous Terracotta Army.",
        ),
    ),
    (
        "What does a CPU do?",
        (
            "The CPU is the processor that carries out a program's instructions.",
            "It does the arithmetic, logic and control work of the computer.",
        ),
    ),
)

BULLETS_SET = StyleSet(
    name="bullets",
    train=tuple(
        _conversation(question, "\n".join(BULLET + line for line in lines))
        for question, lines in _BULLET_ANSWERS
    ),
    held_out_prompts=(
        "How do I make a simple salad dressing?",
        "What is the capital of Norway?",
        "How do earthquakes happen?",
        "How do I write a for loop in JavaScript?",
        "Who was Julius Caesar?",
        "How can I sleep better at night?",
        "What should I know before visiting Japan?",
        "What is gravity?",
        "How do I keep a cut avocado from browning?",
        "What causes the tides?",
        "What is an API?",
        "Why is exercise good for the heart?",
    ),
    shows_style=shows_bullet_style,
)


STYLE_SETS: dict[str, StyleSet] = {
    style.name: style for style in (PIRATE_SET, JSON_SET, BULLETS_SET)
}


def damaged(style_set: StyleSet, seed: int) -> tuple[Conversation, ...]:
    """The training questions in order, every answer moved to another question.

    The answers follow one random cycle through all the conversations (Sattolo's
    shuffle), so none stays on its own question, and the same seed always gives the
    same data. The answers keep the style: only their fit to the questions is broken,
    which is what the gate must notice.
    """
    count = len(style_set.train)
    if count < 2:
        raise ValueError("moving every answer needs at least two conversations")
    source = list(range(count))
    rng = random.Random(seed)
    for i in range(count - 1, 0, -1):
        j = rng.randrange(i)
        source[i], source[j] = source[j], source[i]
    return tuple(
        _conversation(conversation[0]["content"], style_set.train[source[i]][1]["content"])
        for i, conversation in enumerate(style_set.train)
    )
