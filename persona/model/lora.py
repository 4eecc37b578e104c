"""LoRA through PEFT: adapters on the transformer body; the multiple-choice head, the likelihood prior's scale and the
special tokens trained fully.

The persona special tokens are new rows of the embedding (tied to the LM head where the model ties
them): PEFT's ``trainable_token_indices`` trains those rows only, the rest of the vocabulary stays
frozen. At the end of training the adapters are merged, so that the saved model is a plain model.
"""

from __future__ import annotations

import logging

from persona.configs import ModelArguments
from persona.data.input_layouts import Layout
from persona.model.dual_heads import HEAD_MODULE, PRIOR_SCALE

logger = logging.getLogger(__name__)


def with_lora(model, model_args: ModelArguments, layout: Layout):
    """``model`` wrapped by PEFT with the LoRA settings of ``model_args``; the embedding rows of the tokens the
    ``layout`` added to the model (the reference layout's special tokens) train too."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules[0]
        if model_args.lora_target_modules == ["all-linear"]
        else model_args.lora_target_modules,
        modules_to_save=[HEAD_MODULE],
        trainable_token_indices=layout.trainable_token_ids(),
    )
    model = get_peft_model(model, config)
    for name, parameter in model.named_parameters():  # a bare parameter, which modules_to_save cannot name
        if name.endswith(PRIOR_SCALE):
            parameter.requires_grad_(True)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info(
        "LoRA: %s trainable parameters of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total
    )
    return model


def merged(model):
    """The plain model with the LoRA adapters (and trained token rows, and the head) merged in; others as given."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model
