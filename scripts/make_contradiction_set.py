"""Write the quickstart's contradiction set, persona/resources/contradictions/quickstart_valid.json.

The quickstart corpus is slot-filled (scripts/make_quickstart_corpus.py): a bot that is asked about a topic of its
persona (its job, pet, hobby, food, home, music) answers with its own value in one of a few fixed sentences. So a
reply that contradicts the persona can be written exactly: the same sentence with another value of the same topic
("i work as a lawyer. i like it." for a nurse). For each bot side of each held-out (valid) conversation, each turn
whose gold reply answers such a question becomes a turn whose candidates are the nine contradicting replies and the
gold one, last, in the JSON of transfer-learning-conv-ai: ``persona-eval --contradiction_set true`` reports on it
``contradict@1``, the share of turns whose top-ranked candidate contradicts the persona (1 - hits@1, as Dialogue NLI's
evaluation sets report it). Run it again after changing the corpus: ``python scripts/make_contradiction_set.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_quickstart_corpus import OUT, TOPICS  # noqa: E402

CONTRADICTIONS = OUT.parent / "contradictions" / "quickstart_valid.json"


def answer_of(reply: str, persona: list[str]) -> tuple[str, str, str] | None:
    """The topic, answer template and value of a reply that answers from the persona (the reply starts with the
    filled template and the persona holds that value), else None."""
    for topic, (values, facts, _, answers) in TOPICS.items():
        for value in values:
            if not any(fact.format(v=value) in persona for fact in facts):
                continue
            for template in answers:
                if reply.startswith(template.format(v=value)):
                    return topic, template, value
    return None


def contradiction_dialogs(conversation: dict) -> list[dict]:
    """Both bot sides of a conversation as PersonaChat dialogs of their slot-answering turns, each turn's
    candidates the contradicting replies and the gold one last."""
    dialogs = []
    utterances = conversation["utterances"]
    for side, persona in enumerate(conversation["personas"]):
        turns = []
        spoken = ["__ SILENCE __", *utterances] if side == 0 else utterances
        for index in range(1, len(spoken), 2):
            found = answer_of(spoken[index], persona)
            if found is None:
                continue
            topic, template, value = found
            filled = template.format(v=value)
            rest = spoken[index][len(filled) :]
            others = [template.format(v=other) + rest for other in TOPICS[topic][0] if other != value]
            turns.append({"history": spoken[:index], "candidates": [*others, spoken[index]]})
        if turns:
            dialogs.append({"personality": persona, "utterances": turns})
    return dialogs


def contradiction_set(conversations: list[dict]) -> dict:
    """The ``valid`` split of contradiction dialogs of ``conversations``."""
    return {"valid": [dialog for conversation in conversations for dialog in contradiction_dialogs(conversation)]}


def main() -> None:
    lines = (OUT / "valid_conversations.jsonl").read_text().splitlines()
    corpus = contradiction_set([json.loads(line) for line in lines])
    CONTRADICTIONS.parent.mkdir(exist_ok=True)
    CONTRADICTIONS.write_text(json.dumps(corpus, indent=1) + "\n")
    turns = sum(len(dialog["utterances"]) for dialog in corpus["valid"])
    print(f"{len(corpus['valid'])} dialogs, {turns} turns, 9 contradicting candidates each")


if __name__ == "__main__":
    main()
