"""Persona drift: the same persona question at a conversation's first turn and after six turns of small talk; and the
second set of direct persona questions."""

from __future__ import annotations

import json
import sys

import pytest

from persona.commands.eval import main as eval_main
from persona.errors import ConfigError
from persona.metrics import load_metric
from persona.model.decoding import Reply
from persona.model.generation import DecodingArguments
from persona.training import persona_drift as drift
from persona.training.evaluation import EvalArguments
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from make_persona_questions import FACTS, OUT, SEED, conversation  # noqa: E402

JOBS = ["i work as a lawyer.", "i work as a doctor.", "i work as a nurse."]


def test_an_answer_names_the_candidate_it_is_strictly_nearest_to():
    assert drift.named_candidate([0.2, 0.5, 0.1]) == 1
    assert drift.named_candidate([0.5, 0.5, 0.1]) is None  # as near to two values: names neither
    assert drift.named_candidate([0.0, 0.0, 0.0]) is None


def test_drift_asks_each_question_twice_six_turns_apart_and_counts_kept_and_changed_answers(monkeypatch):
    """A bot that answers the nurse's question right both times, the second nurse's right then as a lawyer, and the
    third's with no job at all: 2 of 3 first answers right; of the 2 that named a job, 1 kept, 1 changed."""
    questions = [
        {"persona": [f"i am nurse {n}."], "question": "what do you do?", "candidates": JOBS} for n in range(3)
    ]
    prompts = []

    def bot(loaded, pairs, decoding, batch_size):
        prompts.append(pairs)
        step = len(prompts) - 1
        answers = {
            0: ("i work as a nurse.", "i work as a nurse."),
            1: ("i work as a nurse.", "i work as a lawyer."),
            2: ("i work.", "i work."),
        }
        replies = []
        for persona, history in pairs:
            index = int(persona[0].split()[-1][:-1])
            text = answers[index][step == 7] if history[-1] == "what do you do?" else f"small talk {step}."
            replies.append(Reply(text, True, 3))
        return replies

    monkeypatch.setattr(drift, "generate_replies", bot)
    metrics, records = drift.persona_drift(
        None, questions, DecodingArguments(), load_metric("convai2_f1"), max_history=2, batch_size=4
    )
    assert metrics == {"drift_first_right": 2 / 3, "drift_kept": 1 / 2, "drift_changed": 1 / 2, "drift_questions": 3}
    assert len(prompts) == 8  # the question, six exchanges of small talk, the question again
    conversation_ = records[1]["conversation"]
    assert len(conversation_) == 16 and conversation_[0] == conversation_[14] == "what do you do?"
    assert conversation_[2:13:2] == [drift.SMALL_TALK[(1 + step) % len(drift.SMALL_TALK)] for step in range(6)]
    assert prompts[7][1][1] == conversation_[-6:-1]  # the last 2 exchanges and the question: the first answer is gone
    assert (records[1]["first_named"], records[1]["second_named"]) == (JOBS[2], JOBS[0])
    assert records[2]["first_named"] is None


def test_drift_needs_a_contradiction_set():
    with pytest.raises(ConfigError, match="drift_questions needs the questions of a contradiction set"):
        EvalArguments(drift_questions=4)


def test_the_second_question_set_is_the_builders_and_every_distractor_contradicts_the_persona():
    import random

    shipped = json.loads(OUT.read_text())["valid"]
    rng = random.Random(SEED)
    assert shipped == [conversation(rng) for _ in shipped]
    for dialog in shipped:
        for turn in dialog["utterances"]:
            *others, gold = turn["candidates"]
            (topic,) = [t for t, (_, _, asks, _) in FACTS.items() if turn["history"][-1] in asks]
            values, fact, _, answer = FACTS[topic]
            (own,) = [v for v in values if fact.format(v=v) in dialog["personality"]]
            assert gold == answer.format(v=own) and others == [answer.format(v=v) for v in values if v != own]


def test_persona_eval_measures_drift_on_the_second_set(trained_model_dir, tmp_path):
    argv = ["--model_name_or_path", str(trained_model_dir), "--dataset_path", str(OUT), "--eval_split", "valid"]
    argv += ["--eval_num_candidates", "10", "--contradiction_set", "true", "--drift_questions", "3"]
    argv += ["--max_eval_dialogs", "2", "--max_generation_turns", "2", "--max_length", "6", "--do_sample", "false"]
    argv += ["--dataset_cache", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "eval")]
    assert eval_main(argv) == 0
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "eval" / "drift.jsonl").read_text().splitlines()]
    assert results["drift_questions"] == len(records) == 3 and all(len(r["conversation"]) == 16 for r in records)
    first_named = [r for r in records if r["first_named"] is not None]
    kept = sum(r["second_named"] == r["first_named"] for r in first_named) / max(len(first_named), 1)
    assert results["drift_kept"] == kept
    assert "| drift_kept |" in (tmp_path / "eval" / "report.md").read_text()
