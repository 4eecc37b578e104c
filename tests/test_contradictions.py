"""The quickstart's contradiction set and contradict@1."""

from __future__ import annotations

import json
import sys

from persona.commands.eval import main as eval_main
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
    argv += ["--max_eval_dialogs", "4", "--max_generation_turns", "0", "--dataset_cache", str(tmp_path / "cache")]
    assert eval_main([*argv, "--output_dir", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert results["contradict@1"] == 1 - results["hits@1"] and results["lm_contradict@1"] == 1 - results["lm_hits@1"]
    assert results["num_candidates"] == 10 and "| contradict@1 |" in (tmp_path / "eval" / "report.md").read_text()
