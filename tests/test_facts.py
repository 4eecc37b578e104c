"""A persona model's facts: written into its config under one key when it is built, read back in one place."""

from __future__ import annotations

import json

from persona.configs import ModelArguments
from persona.model.facts import PersonaFacts
from persona.model.loading import load_for_training, load_trained
from tests.conftest import QUICKSTART, TINY_GPT2


def test_the_facts_are_saved_under_one_key_and_read_back_as_trained(tmp_path):
    model_args = ModelArguments(
        model_config=TINY_GPT2,
        tokenizer_name_or_path=str(QUICKSTART / "tokenizer"),
        likelihood_prior=True,
        prior_pmi_weight=0.5,
    )
    loaded = load_for_training(model_args, use_token_types=False)
    expected = PersonaFacts(
        layout="reference", token_types=False, leading_space=True, likelihood_prior=True, prior_pmi_weight=0.5
    )
    assert loaded.facts == expected and not loaded.token_types and loaded.layout.leading_space
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["persona"] == {
        "layout": "reference",
        "token_types": False,
        "leading_space": True,
        "likelihood_prior": True,
        "prior_pmi_weight": 0.5,
    }
    assert not [key for key in config if key.startswith("persona_")]
    again = load_trained(ModelArguments(model_name_or_path=str(tmp_path)))
    assert again.facts == expected and not again.token_types and again.layout.name == "reference"
    assert again.model.persona_prior_scale.item() == 1.0  # the prior's scale built from the facts


def test_flat_fields_of_an_older_save_and_a_reference_checkpoint_read_as_their_facts():
    flat = {"persona_layout": "chat_template", "persona_token_types": False, "persona_leading_space": False}
    assert PersonaFacts.read(flat) == PersonaFacts(layout="chat_template", token_types=False, leading_space=False)
    older = PersonaFacts.read({"persona_layout": "reference", "persona_token_types": True})
    assert older.leading_space is None  # the tokenizer's own rule, as such models were fed
    assert PersonaFacts.read({"model_type": "gpt2"}) is None
    reference = PersonaFacts.of({"model_type": "gpt2"})  # a transfer-learning-conv-ai checkpoint
    assert reference.layout == "reference" and reference.token_types and not reference.leading_space
