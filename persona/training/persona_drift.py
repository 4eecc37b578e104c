"""Persona drift: a question about the persona asked at a conversation's first turn and again after six turns of small
talk; does the bot's answer change?

The questions are a contradiction set's (each turn's last utterance asks about a fact of the persona, its candidates
are the persona's answer, last, and the answers with every other value of the fact). For each of the first
``drift_questions`` turns, a new conversation is generated with the evaluated decoding, all the conversations a turn
at a time together: the question alone, then six utterances of :data:`SMALL_TALK` (the bot answering each), then the
question again, each prompt the last ``max_history`` exchanges as persona-chat keeps them (so after six turns the
first answer has left the window: what keeps the answer is the persona). Each answer *names* the candidate it is
strictly nearest to by ConvAI2's unigram F1 (as ``generated_right`` judges replies), or none. persona-eval reports:

- ``drift_first_right``: the share of first answers that name the persona's own value;
- ``drift_kept``: of the questions whose first answer names a value, the share whose second answer names the same;
- ``drift_changed``: of those, the share whose second answer names another value (the rest name none);
- ``drift_questions``: how many questions were asked.

``drift.jsonl`` holds every conversation, its two answers and what each named.
"""

from __future__ import annotations

from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from persona.data.layout import history_window
from persona.metrics import f1_to_candidates
from persona.model.decoding import generate_replies
from persona.model.generation import DecodingArguments
from persona.model.loading import LoadedModel

SMALL_TALK = (  # the partner's turns between the two questions: none asks about the persona
    "that is nice to hear.",
    "what a lovely day it is today.",
    "i just got back from the grocery store.",
    "i watched a funny movie last night.",
    "the traffic this morning was terrible.",
    "i am trying to sleep more this year.",
    "my neighbor is painting his fence again.",
    "it might rain later this afternoon.",
)
DRIFT_TURNS = 6


def drift_questions(dialogs: list[dict], count: int) -> list[dict]:
    """The first ``count`` question turns of a contradiction set's dialogs: each's persona, question and candidates."""
    questions = [
        {"persona": dialog["persona"], "question": turn["history"][-1], "candidates": turn["candidates"]}
        for dialog in dialogs
        for turn in dialog["turns"]
    ]
    return questions[:count]


def named_candidate(scores: list[float]) -> int | None:
    """The candidate an answer names: the one it is strictly nearest to (its highest score), None on a tie or when
    it shares no word with any."""
    best = max(range(len(scores)), key=scores.__getitem__)
    if scores[best] <= 0 or scores.count(scores[best]) > 1:
        return None
    return best


def _conversations(
    loaded: LoadedModel,
    questions: list[dict],
    decoding: DecodingArguments,
    max_history: int,
    batch_size: int,
    progress: bool,
) -> list[list[str]]:
    """Each question's whole generated conversation: the question, six small-talk exchanges, the question again (with
    the bot's answers after each); ``progress`` shows a bar over the turns."""
    histories: list[list[str]] = [[] for _ in questions]
    for step in tqdm(range(DRIFT_TURNS + 2), desc="Persona drift", unit="turn", disable=not progress):
        for index, (history, question) in enumerate(zip(histories, questions)):
            asked = step in (0, DRIFT_TURNS + 1)
            history.append(question["question"] if asked else SMALL_TALK[(index + step - 1) % len(SMALL_TALK)])
        pairs = [(q["persona"], history_window(h, max_history)) for q, h in zip(questions, histories)]
        for history, reply in zip(histories, generate_replies(loaded, pairs, decoding, batch_size=batch_size)):
            history.append(reply.text)
    return histories


def persona_drift(
    loaded: LoadedModel,
    questions: list[dict],
    decoding: DecodingArguments,
    f1_metric,
    *,
    max_history: int,
    batch_size: int,
) -> tuple[dict[str, float], list[dict]]:
    """The drift metrics of the module over ``questions`` (of :func:`drift_questions`), sharded over processes, and
    one record per question."""
    state = PartialState()
    with state.split_between_processes(questions) as shard:
        records = [
            {**question, "conversation": conversation, "first": conversation[1], "second": conversation[-1]}
            for question, conversation in zip(
                shard, _conversations(loaded, shard, decoding, max_history, batch_size, state.is_main_process)
            )
        ]
    records = gather_object(records) if state.num_processes > 1 else records
    for answer in ("first", "second"):
        scores = f1_to_candidates(f1_metric, [r[answer] for r in records], [r["candidates"] for r in records])
        for record, own in zip(records, scores):
            named = named_candidate(own)
            record[f"{answer}_named"] = None if named is None else record["candidates"][named]
    gold = [record["candidates"][-1] for record in records]
    first_named = [r for r in records if r["first_named"] is not None]
    kept = sum(r["second_named"] == r["first_named"] for r in first_named)
    changed = sum(r["second_named"] not in (None, r["first_named"]) for r in first_named)
    metrics = {
        "drift_first_right": sum(r["first_named"] == g for r, g in zip(records, gold)) / max(len(records), 1),
        "drift_kept": kept / max(len(first_named), 1),
        "drift_changed": changed / max(len(first_named), 1),
        "drift_questions": len(records),
    }
    return metrics, records
