"""Write the second set of direct persona questions, persona/resources/contradictions/persona_questions.json.

The quickstart's contradiction set (scripts/make_contradiction_set.py) asks about the six topics of the quickstart
corpus (job, pet, hobby, food, home, music) in the corpus's own words. This set asks about ten other facts (age,
siblings, a vehicle, a sport, a colour, where one grew up, a morning drink, an instrument, a language, a season of
travel), in other words, and no setting of persona was chosen on it. Each persona is five of those facts; a
conversation opens with small talk, then asks about three of them, one turn each, the earlier answers in the
history. Each turn's candidates are the answer with every other value of the fact (nine replies that
contradict the persona in one word or number) and the persona's own, last, in the JSON of transfer-learning-conv-ai,
so ``persona-eval --contradiction_set true`` reports contradict@1, generated_right and generated_contradict (and
persona drift with ``drift_questions``) on it. Run it again only to change the set:
``python scripts/make_persona_questions.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "persona" / "resources" / "contradictions" / "persona_questions.json"
SEED = 20261207
CONVERSATIONS = 40
FACTS_PER_PERSONA, QUESTIONS_PER_CONVERSATION = 5, 3

FACTS = {  # topic: (values, the persona's sentence, ways to ask, the answer)
    "age": (
        ["19", "23", "27", "31", "36", "42", "48", "55", "63", "71"],
        "i am {v} years old.",
        ["how old are you, if you do not mind me asking?", "what age are you?"],
        "i am {v} years old.",
    ),
    "siblings": (
        ["one brother", "two brothers", "three brothers", "one sister", "two sisters", "three sisters"]
        + ["a twin brother", "a twin sister", "four siblings", "five siblings"],
        "i have {v}.",
        ["do you have any brothers or sisters?", "how big is your family?"],
        "i have {v}.",
    ),
    "vehicle": (
        ["truck", "minivan", "motorcycle", "convertible", "jeep", "scooter", "tractor", "van", "sedan", "bicycle"],
        "i get around on my {v}.",
        ["how do you get to places?", "what do you drive?"],
        "i get around on my {v}.",
    ),
    "sport": (
        ["tennis", "soccer", "basketball", "golf", "hockey", "volleyball", "baseball", "rugby", "cricket", "bowling"],
        "i play {v} with friends.",
        ["are you into any sports?", "what sport do you play?"],
        "i play {v} with my friends.",
    ),
    "colour": (
        ["red", "blue", "green", "yellow", "purple", "orange", "pink", "black", "white", "gray"],
        "my favorite color is {v}.",
        ["which color do you like the most?", "what is your favorite color?"],
        "my favorite color is {v}.",
    ),
    "childhood": (
        ["canada", "mexico", "brazil", "japan", "india", "france", "germany", "italy", "spain", "kenya"],
        "i grew up in {v}.",
        ["where were you raised?", "where did you grow up?"],
        "i grew up in {v}.",
    ),
    "drink": (
        ["coffee", "tea", "juice", "milk", "water", "cocoa", "soda", "smoothies", "lemonade", "espresso"],
        "i drink {v} every morning.",
        ["what do you drink when you wake up?", "how do you start your mornings?"],
        "i drink {v} every morning.",
    ),
    "instrument": (
        ["guitar", "piano", "violin", "drums", "flute", "cello", "trumpet", "saxophone", "harp", "banjo"],
        "i play the {v}.",
        ["do you play an instrument?", "are you musical at all?"],
        "i play the {v}.",
    ),
    "language": (
        ["spanish", "french", "german", "italian", "russian", "arabic", "hindi", "korean", "polish", "greek"],
        "i speak {v} at home.",
        ["what language do you speak at home?", "do you speak other languages?"],
        "i speak {v} at home.",
    ),
    "travel": (
        ["rome", "london", "cairo", "sydney", "lisbon", "seoul", "lima", "oslo", "dublin", "vienna"],
        "i want to visit {v} one day.",
        ["where would you like to travel?", "is there a place you dream of seeing?"],
        "i want to visit {v} one day.",
    ),
}
SMALL_TALK = [  # (the partner's opening, the bot's answer)
    ("hi there! how is your day going?", "hello! it is going well, thank you."),
    ("good morning! nice to meet you.", "nice to meet you too!"),
    ("hey, how are you doing today?", "i am doing great, thanks for asking."),
    ("hello! what a nice day, right?", "yes, the weather is lovely today."),
]


def conversation(rng: random.Random) -> dict:
    """One persona and its question turns (see the module)."""
    topics = rng.sample(sorted(FACTS), FACTS_PER_PERSONA)
    values = {topic: rng.choice(FACTS[topic][0]) for topic in topics}
    persona = [FACTS[topic][1].format(v=values[topic]) for topic in topics]
    history = list(rng.choice(SMALL_TALK))
    turns = []
    for topic in rng.sample(topics, QUESTIONS_PER_CONVERSATION):
        options, _, questions, answer = FACTS[topic]
        history.append(rng.choice(questions))
        gold = answer.format(v=values[topic])
        others = [answer.format(v=value) for value in options if value != values[topic]]
        turns.append({"history": list(history), "candidates": [*others, gold]})
        history.append(gold)
    return {"personality": persona, "utterances": turns}


def main() -> None:
    rng = random.Random(SEED)
    dialogs = [conversation(rng) for _ in range(CONVERSATIONS)]
    OUT.write_text(json.dumps({"valid": dialogs}, indent=1) + "\n")
    turns = sum(len(dialog["utterances"]) for dialog in dialogs)
    print(f"{len(dialogs)} personas, {turns} questions, 9 contradicting candidates each: {OUT}")


if __name__ == "__main__":
    main()
