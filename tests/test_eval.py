"""persona-eval and the metrics: hand-checked values, batch-size invariance, ParlAI candidates, F1 recomputed."""

from __future__ import annotations

import json

import pytest

from persona.commands.eval import main as eval_main
from persona.commands.train import main as train_main
from persona.metrics import load_metric
from tests.conftest import QUICKSTART, tiny_train_args


def test_convai2_f1_on_hand_checked_examples():
    f1 = load_metric("convai2_f1")
    # "I like the cats!" -> [i, like, cats]; "i like dogs" -> [i, like, dogs]: P = R = 2/3
    assert f1.compute(predictions=["I like the cats!"], references=[["i like dogs"]])["f1"] == pytest.approx(2 / 3)
    # the best of several references; articles and punctuation vanish; an empty prediction scores 0
    result = f1.compute(predictions=["A dog, a cat.", ""], references=[["the bird", "dog cat"], ["x"]])
    assert result["f1_per_example"] == [1.0, 0.0] and result["f1"] == 0.5


def test_hits_at_k_on_hand_checked_examples():
    hits = load_metric("hits_at_k")
    # ranks: 0; 2 (0.8 and 0.3 above 0.2); 1 (the tie with 1.0 counts against the gold)
    assert hits.compute(
        predictions=[[0.1, 0.9, 0.5], [0.8, 0.2, 0.3], [1.0, 1.0, 0.0]], references=[1, 1, 0], k=[1, 2]
    ) == {
        "hits@1": 1 / 3,
        "hits@2": 2 / 3,
    }
    assert hits.compute(predictions=[[0.5, 0.5], [0.1, 0.2, 0.3, 0.9]], references=[1, 3], k=[1, 2]) == {
        "hits@1": 0.5,
        "hits@2": 1.0,
    }


def test_a_head_that_scores_every_candidate_alike_gets_no_hits_in_the_trainer():
    import torch

    from persona.model.dual_heads import DualOutput
    from persona.training.trainer import metrics_from_scores, turn_scores

    output = DualOutput(
        nll_sum=torch.ones(3),
        tokens=torch.ones(3),
        mc_logits=torch.tensor([[2.0, 2.0, 2.0], [1.0, 1.0, -3e38], [0.0, 5.0, 1.0]]),
        candidate_nll_sum=torch.tensor([[6.0, 1.0, 4.0], [1.0, 1.0, 0.0], [1.0, 2.0, 1.0]]),
        candidate_tokens=torch.tensor([[2, 1, 2], [1, 1, 1], [2, 1, 1]]),
    )
    valid = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    scores = turn_scores(output, torch.tensor([2, 1, 1]), valid)
    assert scores[:, 0].tolist() == [2, 1, 0]  # ties count against the gold; a padding slot never does
    # mean log-likelihoods: [-3, -1, -2] (gold -2: one above), [-1, -1, pad] (a tie), [-0.5, -2, -1] (gold -2: two
    # above)
    assert scores[:, 5].tolist() == [1, 1, 2]
    metrics = metrics_from_scores(scores.numpy(), 1.0, 1.0, ks=(1, 2))
    assert (
        metrics["hits@1"] == pytest.approx(1 / 3)
        and metrics["lm_hits@1"] == 0
        and metrics["lm_hits@2"] == pytest.approx(2 / 3)
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "run"
    assert (
        train_main(
            tiny_train_args(
                out,
                "--max_train_dialogs",
                "16",
                "--max_eval_dialogs",
                "2",
                "--eval_num_candidates",
                "4",
                "--max_steps",
                "2",
            )
        )
        == 0
    )
    return out


def _evaluate(trained, out, *extra):
    args = [
        "--model_name_or_path",
        str(trained),
        "--dataset_path",
        str(QUICKSTART),
        "--dataset_cache",
        str(trained.parent / "cache"),
        "--max_eval_dialogs",
        "3",
        "--output_dir",
        str(out),
        "--do_sample",
        "false",
        "--max_length",
        "8",
        *extra,
    ]
    assert eval_main(args) == 0
    return json.loads((out / "eval_results.json").read_text())


def test_eval_writes_metrics_generations_and_report(trained, tmp_path):
    results = _evaluate(trained, tmp_path / "a", "--per_device_eval_batch_size", "1", "--generation_batch_size", "1")
    assert results["num_candidates"] == 20 and results["num_turns"]["hits"] == results["num_turns"]["f1"] == 18
    assert 0 <= results["hits@1"] <= results["hits@5"] <= results["hits@10"] <= 1
    lines = [json.loads(line) for line in (tmp_path / "a" / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 18 and set(lines[0]) >= {"persona", "history", "prediction", "gold"}
    assert results["f1"] == pytest.approx(sum(line["f1"] for line in lines) / len(lines))
    recomputed = load_metric("convai2_f1").compute(
        predictions=[line["prediction"] for line in lines], references=[line["gold"] for line in lines]
    )
    assert results["f1"] == pytest.approx(recomputed["f1"])
    speed = results["generation_speed"]
    assert speed["tokens"] == sum(line["tokens"] for line in lines) and speed["seconds"] > 0
    assert speed["tokens_per_s"] == pytest.approx(speed["tokens"] / speed["seconds"])
    assert all(line["tokens"] <= 8 and (line["tokens"] < 8 or not line["ended"]) for line in lines)
    report = (tmp_path / "a" / "report.md").read_text()
    assert "| hits@1 |" in report and "generated:" in report
    said = f"{speed['tokens']} reply tokens in {speed['seconds']:.1f} s, {speed['tokens_per_s']:.1f} tokens/s"
    assert said in report
    again = _evaluate(trained, tmp_path / "b", "--per_device_eval_batch_size", "7", "--generation_batch_size", "5")
    for key in ("perplexity", "hits@1", "hits@5", "f1"):
        assert again[key] == pytest.approx(results[key], rel=1e-6, abs=1e-6), key


def test_parlai_turns_keep_their_own_candidates(trained, tmp_path):
    lines = ["1 your persona: i like cats."]
    for n in range(2, 4):
        candidates = [f"distractor number {n}-{i}." for i in range(19)] + [f"gold reply {n}."]
        lines.append(f"{n} question {n}?\tgold reply {n}.\t\t" + "|".join(candidates))
    (tmp_path / "valid_self_original.txt").write_text("\n".join(lines) + "\n")
    results = _evaluate(
        trained,
        tmp_path / "out",
        "--dataset_path",
        str(tmp_path / "valid_self_original.txt"),
        "--max_eval_dialogs",
        "1",
    )
    assert results["num_candidates"] == 20 and results["num_turns"]["hits"] == 2


def test_a_prompted_baseline_scores_each_candidate_through_the_chat_template(plain_chat_model):
    from transformers import AutoTokenizer

    from persona.data.chat_layout import template_turn
    from persona.data.conversation import conversation_messages

    tokenizer = AutoTokenizer.from_pretrained(plain_chat_model)
    persona, history, candidates = (
        ["i like cats.", "i am a nurse."],
        ["hi!", "hello.", "what do you do?"],
        ["i sing.", "i am a nurse."],
    )
    example = template_turn(tokenizer, persona, history, candidates)
    messages = conversation_messages(persona, history)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    for candidate, block in zip(candidates, example["candidates"]):
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": candidate}], tokenize=True, return_dict=False
        )
        assert (
            example["prefix_ids"] + block == full
        )  # the prompt once, then the reply up to and including its end token
        assert block[-1] == tokenizer.eos_token_id and block[0] == tokenizer.convert_tokens_to_ids("<|assistant|>")


def test_persona_eval_of_a_prompted_baseline_reports_likelihood_ranking_perplexity_and_f1(plain_chat_model, tmp_path):
    results = _evaluate(plain_chat_model, tmp_path / "out", "--eval_num_candidates", "5")
    assert "chat template" in results["prompted"] and "hits@1" not in results and "mc_loss" not in results
    assert 0 <= results["lm_hits@1"] <= results["lm_hits@5"] == 1.0 and results["perplexity"] > 1
    assert (
        results["num_turns"]["hits"] == results["num_turns"]["f1"] == 18
        and 0 <= results["f1"] <= 1
        and results["token_types"] is False
    )
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| lm_hits@1 |" in report and "| hits@1 |" not in report
