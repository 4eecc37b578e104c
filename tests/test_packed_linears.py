"""Linear layers packed once for oneDNN on the CPU: the same numbers as torch's own products, in bfloat16 only."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_GPT2, TINY_LLAMA, as_loaded, build_tiny
from torch import nn
from transformers.pytorch_utils import Conv1D

from persona.configs import ModelArguments
from persona.model.decoding import generate_replies
from persona.model.generation import DecodingArguments
from persona.model.loading import load_for_inference
from persona.model.packed_linears import PackedLinear, pack_linears, packing_available

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch has no oneDNN weight packing")

DIALOGS = [(["i like cats.", "i live in paris."], ["hello! how are you?"]), (["i am a nurse."], ["hi", "hey."])]


def _linears(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.Linear, Conv1D)) for m in model.modules())


@pytest.mark.parametrize("config", [TINY_GPT2, TINY_LLAMA], ids=["gpt2-conv1d", "llama-linear"])
def test_a_packed_bfloat16_model_gives_the_very_same_logits_and_replies(config, tokenizer):
    """Every linear layer (GPT-2's Conv1D transposed) is swapped, and the language-model and multiple-choice logits,
    and the sampled replies for one seed, are bit for bit those of the model before packing."""
    model = build_tiny(config).to(torch.bfloat16)
    packed = copy.deepcopy(model)
    linears = _linears(model)
    assert pack_linears(packed) == linears > 0
    assert _linears(packed) == 0 and sum(isinstance(m, PackedLinear) for m in packed.modules()) == linears
    inputs = {
        "input_ids": torch.randint(5, 200, (2, 3, 12)),
        "attention_mask": torch.ones(2, 3, 12, dtype=torch.long),
        "mc_token_ids": torch.full((2, 3), 11),
    }
    with torch.no_grad():
        before, after = model(**inputs), packed(**inputs)
    assert torch.equal(before.logits, after.logits) and torch.equal(before.mc_logits, after.mc_logits)
    replies = []
    for m in (model, packed):
        torch.manual_seed(3)
        replies.append(generate_replies(as_loaded(m, tokenizer), DIALOGS, DecodingArguments(max_length=8)))
    assert replies[0] == replies[1] and all(r.tokens for r in replies[0])


def test_a_float32_model_is_left_as_it_is(tokenizer):
    """float32 is not packed (oneDNN's product would differ from MKL's in the last bits)."""
    model = build_tiny(TINY_LLAMA)
    assert pack_linears(model) == 0 and _linears(model) > 0


def test_loading_to_chat_evaluate_or_serve_in_bfloat16_packs_the_model(trained_model_dir):
    """load_for_inference packs a bfloat16 model on a machine without an accelerator, and leaves float32 as saved."""
    halved = load_for_inference(ModelArguments(model_name_or_path=str(trained_model_dir), dtype="bfloat16"))
    as_saved = load_for_inference(ModelArguments(model_name_or_path=str(trained_model_dir)))
    assert _linears(halved.model) == 0 and any(isinstance(m, PackedLinear) for m in halved.model.modules())
    assert _linears(as_saved.model) > 0
