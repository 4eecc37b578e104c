"""Persona use in persona-eval: each turn's gold reply after its own persona and after others."""

from __future__ import annotations

import json

import pytest

from persona.commands.eval import main as eval_main
from persona.configs import DataArguments
from persona.data import prepare_corpus
from persona.errors import ConfigError
from persona.training.evaluation import EvalArguments
from persona.training.persona_use import _examples, _hits_and_gain, swapped_turns
from tests.conftest import CONVERSATIONS, load_folder, write_conversations


def _dialogs(count: int = 4) -> list[dict]:
    return [
        {
            "persona": [f"i am person {index}."],
            "turns": [{"history": ["hi"], "candidates": [f"distractor {index}", f"gold {index}"]}],
        }
        for index in range(count)
    ]


def test_swaps_are_drawn_reproducibly_and_never_the_turns_own_persona():
    dialogs = [*_dialogs(6), _dialogs(1)[0]]  # a persona twice: still never swapped in for itself
    first, again = swapped_turns(dialogs, 3, seed=5), swapped_turns(dialogs, 3, seed=5)
    assert first == again and swapped_turns(dialogs, 3, seed=6) != first
    for dialog, turn in zip(dialogs, first):
        assert turn["personas"][0] == dialog["persona"] and turn["gold"] == dialog["turns"][0]["candidates"][-1]
        assert len(turn["personas"]) == 4 and dialog["persona"] not in turn["personas"][1:]
        assert len({tuple(p) for p in turn["personas"]}) == 4
    assert all(len(turn["personas"]) == 6 for turn in swapped_turns(dialogs, 50, seed=0))  # all 5 others


def test_swaps_are_drawn_from_the_pool_when_one_is_given():
    dialogs, pool = _dialogs(1), [dialog["persona"] for dialog in _dialogs(6)]
    (turn,) = swapped_turns(dialogs, 5, seed=0, pool=pool)
    assert sorted(turn["personas"][1:]) == pool[1:]  # the five others of the pool, none of them the dialog's own
    assert swapped_turns(dialogs, 5, seed=0)[0]["personas"] == [dialogs[0]["persona"]]  # the dialogs alone: none


def test_hits_count_ties_as_misses_and_the_gain_is_own_minus_the_others_mean():
    rows = [[-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0], [-1.0, -1.0, -4.0]]
    hits, gain = _hits_and_gain(rows)
    assert hits == pytest.approx(1 / 3)  # the first only: the third ties
    assert gain == pytest.approx(((-1 + 2.5) + (-2 + 2) + (-1 + 2.5)) / 3)


def _prepared_conversations(loaded, tmp_path, **options):
    """The eval split of :data:`CONVERSATIONS` (one file, four dialogs), prepared in ``loaded``'s layout."""
    args = DataArguments(
        dataset_path=str(write_conversations(tmp_path / "c.jsonl", CONVERSATIONS)),
        dataset_cache=str(tmp_path / "cache"),
        **options,
    )
    return prepare_corpus(args, loaded.layout, max_positions=loaded.max_positions, roles=("eval",))


def test_the_own_persona_example_is_the_evaluated_turns_prefix_and_gold(trained_model_dir, tmp_path):
    loaded = load_folder(trained_model_dir)
    corpus = _prepared_conversations(loaded, tmp_path, eval_num_candidates=1)
    turns = swapped_turns(corpus.dialogs["eval"], 2, seed=0)
    for feature, turn in zip(corpus.features["eval"], turns):
        own, *others = _examples(loaded, turn, loaded.max_positions)
        assert own == {"prefix_ids": feature["prefix_ids"], "candidates": feature["candidates"]}
        assert [other["candidates"] for other in others] == [own["candidates"]] * 2
        assert all(other["prefix_ids"] != own["prefix_ids"] for other in others)


@pytest.mark.parametrize("which", ["trained", "prompted"])
def test_persona_eval_reports_persona_use(which, trained_model_dir, plain_chat_model, tmp_path):
    model = trained_model_dir if which == "trained" else plain_chat_model
    argv = ["--model_name_or_path", str(model), "--dataset_path"]
    argv += [str(write_conversations(tmp_path / "c.jsonl", CONVERSATIONS)), "--dataset_cache", str(tmp_path / "c")]
    argv += ["--output_dir", str(tmp_path / "eval"), "--eval_num_candidates", "2", "--persona_swaps", "2"]
    assert eval_main([*argv, "--do_sample", "false", "--max_length", "3"]) == 0
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert 0 <= results["persona_hits@1"] <= 1 and results["persona_swaps"] == 2
    assert results["persona_num_turns"] == results["num_turns"]["hits"] == 8
    assert ("persona_mc_hits@1" in results) == (which == "trained")
    assert "| persona_hits@1 |" in (tmp_path / "eval" / "report.md").read_text()


def test_persona_eval_swaps_in_personas_of_the_whole_split_not_only_the_evaluated_dialogs(
    trained_model_dir, tmp_path, caplog
):
    """One dialog evaluated of the file's four (four distinct personas): its turns are still scored after the three
    others, and asked for five, persona-eval says that three is all there are."""
    argv = ["--model_name_or_path", str(trained_model_dir), "--dataset_path"]
    argv += [str(write_conversations(tmp_path / "c.jsonl", CONVERSATIONS)), "--dataset_cache", str(tmp_path / "c")]
    argv += ["--output_dir", str(tmp_path / "eval"), "--eval_num_candidates", "2", "--max_eval_dialogs", "1"]
    with caplog.at_level("WARNING", logger="persona"):
        assert eval_main([*argv, "--persona_swaps", "5", "--max_generation_turns", "0"]) == 0
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert results["persona_swaps"] == 3 and results["persona_num_turns"] == results["num_turns"]["hits"] == 2
    assert "persona_swaps is 5 but the split has only 3 other personas" in caplog.text
    assert "chance is 1/4" in caplog.text


def test_the_prepared_eval_split_keeps_the_personas_of_the_whole_split(trained_model_dir, tmp_path):
    loaded = load_folder(trained_model_dir)
    corpus = _prepared_conversations(loaded, tmp_path, max_eval_dialogs=1)  # built, then read from its cache
    everyone = sorted(persona for conversation in CONVERSATIONS for persona in conversation["personas"])
    assert len(corpus.dialogs["eval"]) == 1 and corpus.personas["eval"] == everyone
    assert not corpus.cache_path.joinpath("read").exists()  # the pool is kept, the scratch space is not


def test_negative_swaps_are_refused():
    with pytest.raises(ConfigError, match="persona_swaps"):
        EvalArguments(persona_swaps=-1)
