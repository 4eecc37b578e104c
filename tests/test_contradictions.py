"""The quickstart's contradiction set and contradict@1."""

from __future__ import annotations

import json
import sys

from persona.commands.eval import main as eval_main
from persona.metrics import load_metric
from persona.training.evaluation import generated_answers
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from make_contradiction_set import CONTRADICTIONS, TOPICS, contradiction_set  # noqa: E402


def test_the_shipped_set_is_the_builders_and_every_distractor_contradicts_the_persona():
    conversations = [
        json.loads(line) for line in (REPO / "persona/resources/quickstart/valid_conversations.jsonl").open()
    ]
    shipped = json.loads(CONTRADICTIONS.read_text())
    assert shipped == contradiction_set(conversations)
    turns = [(dialog["personality"], turn) for dialog in shipped["valid"] for turn in dialog["utterances"]]
    assert len(turns) > 200
    for persona, turn in turns:
        *others, gold = turn["candidates"]
        assert len(set(others)) == 9 and gold not in others
        for other in others:
            # the gold reply with its persona value swapped for another value of the same topic
            assert any(
                other == gold.replace(value, other_value)
                and any(fact.format(v=value) in persona for fact in facts)
                and not any(fact.format(v=other_value) in persona for fact in facts)
                for values, facts, *_ in TOPICS.values()
                for value in values
                for other_value in values
                if other_value != value
            ), (gold, other)


def test_persona_eval_reports_contradict_at_1_on_the_set(trained_model_dir, tmp_path):
    argv = ["--model_name_or_path", str(trained_model_dir), "--dataset_path", str(CONTRADICTIONS)]
    argv += ["--eval_split", "valid", "--eval_num_candidates", "10", "--contradiction_set", "true"]
    argv += ["--max_eval_dialogs", "4", "--max_generation_turns", "6", "--dataset_cache", str(tmp_path / "cache")]
    assert eval_main([*argv, "--output_dir", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert results["contradict@1"] == 1 - results["hits@1"] and results["lm_contradict@1"] == 1 - results["lm_hits@1"]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert results["num_candidates"] == 10 and "| contradict@1 |" in report and "| generated_contradict |" in report
    records = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    flagged = sum("nearest_contradiction" in record for record in records)
    assert len(records) == 6 and results["generated_contradict"] == flagged / 6
    assert 0 <= results["generated_right"] <= 1 - results["generated_contradict"]


def test_a_generated_reply_contradicts_when_it_is_nearer_to_a_contradiction_than_to_the_gold():
    """Three replies to "what do you do?" for a nurse: the lawyer's answer contradicts, the nurse's is right, and one
    that names no job is as near to every candidate: neither."""
    candidates = ["i work as a lawyer. i like it.", "i work as a doctor. i like it.", "i work as a nurse. i like it."]
    records = [
        {"prediction": prediction, "candidates": candidates}
        for prediction in ("i work as a lawyer.", "i am a nurse, i like it.", "i work. i like it.")
    ]
    shares = generated_answers(records, load_metric("convai2_f1"))
    assert shares == {"generated_contradict": 1 / 3, "generated_right": 1 / 3}
    assert records[0]["nearest_contradiction"] == candidates[0]
    assert "nearest_contradiction" not in records[1] and "nearest_contradiction" not in records[2]
