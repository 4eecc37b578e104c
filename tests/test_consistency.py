"""Consistency of generated replies with their persona, judged by an NLI model (here tiny ones whose label is
forced)."""

from __future__ import annotations

import json

import pytest
import torch

from persona.errors import ConfigError, ModelLoadError
from persona.training.consistency import consistency, load_judge
from tests.conftest import CONVERSATIONS, QUICKSTART, write_conversations

LABELS = {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}


def tiny_nli(folder, forced: str | None, id2label=LABELS):
    """A 1-layer BERT classifier on the quickstart tokenizer that always answers ``forced`` (its head's weights zero,
    its bias pointing at that label)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART / "tokenizer")
    tokenizer.pad_token = tokenizer.eos_token
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
    )
    model = BertForSequenceClassification(config)
    if forced is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([10.0 if id2label[i] == forced else 0.0 for i in id2label]))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


RECORDS = [
    {"persona": ["i like cats.", "i am a nurse."], "prediction": "i hate cats."},
    {"persona": ["i live in paris."], "prediction": "hello!"},
]


@pytest.mark.parametrize(("forced", "score", "rate"), [("CONTRADICTION", -1.5, 1.0), ("ENTAILMENT", 1.5, 0.0)])
def test_each_reply_is_judged_against_each_persona_sentence(tmp_path, forced, score, rate):
    judge = load_judge(str(tiny_nli(tmp_path / "nli", forced)))
    records = [dict(record) for record in RECORDS]
    metrics = consistency(judge, records)
    assert metrics["consistency"] == score and metrics["contradiction_rate"] == rate  # (-2 - 1) / 2, (2 + 1) / 2
    assert records[0]["contradicts"] == (RECORDS[0]["persona"] if forced == "CONTRADICTION" else [])


def test_an_nli_model_without_named_labels_or_missing_is_a_clear_error(tmp_path):
    unnamed = tiny_nli(tmp_path / "unnamed", None, id2label={0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(ConfigError, match="not entailment, neutral or contradiction"):
        load_judge(str(unnamed))
    with pytest.raises(ModelLoadError, match="consistency model") as error:
        load_judge(str(tmp_path / "absent"))
    assert "hf download" in error.value.fix and error.value.where == "consistency_model"


def test_persona_eval_reports_consistency_and_the_contradicted_sentences(trained_model_dir, tmp_path):
    from persona.commands.eval import main as eval_main

    nli = tiny_nli(tmp_path / "nli", "CONTRADICTION")
    argv = ["--model_name_or_path", str(trained_model_dir), "--dataset_path"]
    argv += [str(write_conversations(tmp_path / "c.jsonl", CONVERSATIONS)), "--dataset_cache", str(tmp_path / "c")]
    argv += ["--output_dir", str(tmp_path / "eval"), "--eval_num_candidates", "2", "--consistency_model", str(nli)]
    assert eval_main([*argv, "--do_sample", "false", "--max_length", "3"]) == 0
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert results["contradiction_rate"] == 1.0 and results["consistency"] == -2.0  # two sentences per persona
    generations = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").open()]
    assert all(g["contradicts"] == g["persona"] for g in generations)
    assert "| contradiction_rate |" in (tmp_path / "eval" / "report.md").read_text()
