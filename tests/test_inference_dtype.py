"""dtype: the precision a trained model is loaded in to chat with, evaluate or serve; training refuses it."""

from __future__ import annotations

import pytest
import torch

from persona.configs import ModelArguments
from persona.errors import ConfigError
from persona.model.generation import prompt_inputs
from persona.model.loading import load_for_inference, load_for_training
from persona.model.running_batch import RunningBatch


def test_a_trained_model_loads_and_decodes_in_bfloat16(trained_model_dir):
    """The float32 model persona-train saved loads as saved by default and in bfloat16 when asked; the running batch
    decodes both, its logits float32 and close."""
    as_saved = load_for_inference(ModelArguments(model_name_or_path=str(trained_model_dir)))
    halved = load_for_inference(ModelArguments(model_name_or_path=str(trained_model_dir), dtype="bfloat16"))
    assert as_saved.model.dtype == torch.float32 and halved.model.dtype == torch.bfloat16
    prompt = prompt_inputs(["i like cats."], ["hello!"], as_saved, 4)
    logits = [RunningBatch(loaded).join([prompt]) for loaded in (as_saved, halved)]
    assert all(row.dtype == torch.float32 for row in logits)
    assert not torch.equal(*logits)
    torch.testing.assert_close(logits[1], logits[0], atol=0.1, rtol=0.05)


def test_an_unknown_dtype_and_a_dtype_for_training_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="dtype is 'int8'.*float32, bfloat16"):
        ModelArguments(dtype="int8")
    with pytest.raises(ConfigError, match="dtype bfloat16 is for chatting, evaluating and serving"):
        load_for_training(ModelArguments(model_name_or_path=str(tmp_path), dtype="bfloat16"))
