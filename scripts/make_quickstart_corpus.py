"""Write the quickstart corpus and tokenizer shipped in persona/resources/quickstart/.

The corpus is small, synthetic and persona-grounded: two speakers with four-fact personas ask each
other about pets, jobs, hobbies, food, homes and music, and answer from their own persona. Distractors drawn
from other dialogs can mostly be told from the gold reply by the question alone; the contradiction set
(scripts/make_contradiction_set.py) is where only the persona tells the replies apart. The tokenizer is a
byte-level BPE (GPT-2's algorithm) trained on that corpus: small enough for a CPU quickstart, and it
needs no download. Run it again only to change the corpus: `python scripts/make_quickstart_corpus.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2TokenizerFast

OUT = Path(__file__).resolve().parent.parent / "persona" / "resources" / "quickstart"
TOPICS = {
    "pet": (
        ["dog", "cat", "parrot", "hamster", "rabbit", "turtle", "horse", "goldfish", "snake", "pig"],
        ["i have a pet {v}.", "my best friend is my {v}."],
        ["do you have any pets?", "any animals at home?", "are you an animal person?"],
        ["yes, i have a {v} and i love it.", "i do, a {v}. it keeps me busy.", "my {v} is waiting for me at home."],
    ),
    "job": (
        ["nurse", "teacher", "chef", "pilot", "farmer", "mechanic", "lawyer", "painter", "baker", "firefighter"],
        ["i work as a {v}.", "i am a {v}."],
        ["what do you do for a living?", "what is your job?", "where do you work?"],
        ["i am a {v}, it is hard work.", "i work as a {v}. i like it.", "{v}. i have done it for years."],
    ),
    "hobby": (
        [
            "hiking",
            "chess",
            "knitting",
            "surfing",
            "gardening",
            "fishing",
            "dancing",
            "cycling",
            "singing",
            "swimming",
        ],
        ["i love {v}.", "in my free time i enjoy {v}."],
        ["what do you do for fun?", "any hobbies?", "how do you spend your weekends?"],
        ["i love {v}, i do it every weekend.", "mostly {v}. it relaxes me.", "{v}! i could do it all day."],
    ),
    "food": (
        ["pizza", "sushi", "tacos", "pasta", "curry", "salad", "burgers", "pancakes", "soup", "steak"],
        ["my favorite food is {v}.", "i eat {v} every day."],
        ["what is your favorite food?", "what do you like to eat?", "are you hungry?"],
        ["i could eat {v} every day.", "{v}, always {v}.", "i just had some {v}, it was great."],
    ),
    "home": (
        [
            "paris",
            "tokyo",
            "texas",
            "canada",
            "chicago",
            "london",
            "a farm",
            "the beach",
            "the mountains",
            "a small town",
        ],
        ["i live in {v}.", "my home is in {v}."],
        ["where do you live?", "where are you from?", "where is home for you?"],
        ["i live in {v}.", "{v}, i moved there last year.", "i am from {v}, it is lovely."],
    ),
    "music": (
        ["jazz", "rock", "country", "rap", "classical", "pop", "blues", "metal", "reggae", "folk"],
        ["i listen to {v} music.", "{v} is my favorite music."],
        ["what music do you like?", "what are you listening to lately?", "do you like music?"],
        ["i listen to {v} all the time.", "mostly {v}. what about you?", "{v}, it makes me happy."],
    ),
}
GREETINGS = ["hi, how are you?", "hello there!", "hey, how is your day?", "good evening!"]
OPENERS = ["i am good, thanks. tell me about yourself.", "great, thank you. nice to meet you.", "fine, and you?"]
CLOSERS = ["nice talking to you!", "i have to go now, bye!", "it was fun chatting, see you."]


def persona(rng: random.Random) -> dict[str, str]:
    """Four topics and a value for each."""
    return {topic: rng.choice(TOPICS[topic][0]) for topic in rng.sample(sorted(TOPICS), 4)}


def sentences(facts: dict[str, str], rng: random.Random) -> list[str]:
    return [rng.choice(TOPICS[t][1]).format(v=v) for t, v in facts.items()]


def conversation(rng: random.Random) -> dict:
    """Greetings, then each speaker asks about a topic of the other's persona and gets answered from it."""
    facts = [persona(rng), persona(rng)]
    utterances = [rng.choice(GREETINGS), rng.choice(OPENERS)]
    asked = [rng.sample(sorted(facts[1]), 3), rng.sample(sorted(facts[0]), 3)]
    for first, second in zip(asked[0], asked[1]):
        utterances.append(rng.choice(TOPICS[first][2]))  # user 1 asks user 2
        utterances.append(rng.choice(TOPICS[first][3]).format(v=facts[1][first]) + " " + rng.choice(TOPICS[second][2]))
        utterances.append(rng.choice(TOPICS[second][3]).format(v=facts[0][second]))  # user 1 answers
    utterances.append(rng.choice(CLOSERS))
    return {"personas": [sentences(facts[0], rng), sentences(facts[1], rng)], "utterances": utterances}


def main() -> None:
    rng = random.Random(1234)
    OUT.mkdir(parents=True, exist_ok=True)
    splits = {"train": 400, "valid": 60}
    texts = []
    for split, count in splits.items():
        records = [conversation(rng) for _ in range(count)]
        with open(OUT / f"{split}_conversations.jsonl", "w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
                texts += [s for p in record["personas"] for s in p] + record["utterances"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [" " + t for t in texts], vocab_size=1000, min_frequency=2, special_tokens=["<|endoftext|>"]
    )
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(OUT / "tokenizer")
    print({split: count for split, count in splits.items()}, "conversations; tokenizer vocabulary", len(tokenizer))


if __name__ == "__main__":
    main()
