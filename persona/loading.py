"""Loading models and tokenizers: a base model to fine-tune, or a trained persona model (or a reference checkpoint).

Local folders, Hub ids (with ``revision``), GGUF checkpoints (de-quantized on load) and fresh models built
from a ``model_config``; offline, a clear error that says what is missing and how to supply it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from transformers import AutoConfig, AutoTokenizer, GgufConfig

from persona.configs import ModelArguments
from persona.data.tokenize import wants_leading_space
from persona.errors import ConfigError, ModelLoadError, first_line
from persona.modeling import model_class
from persona.special_tokens import add_special_tokens, has_persona_tokens, resize_embeddings, special_ids

logger = logging.getLogger(__name__)


def model_config_dict(model_args: ModelArguments) -> dict[str, Any] | None:
    """``model_config`` as a mapping (it arrives as JSON text), or None."""
    if model_args.model_config is None:
        return None
    try:
        config = json.loads(model_args.model_config)
    except json.JSONDecodeError as error:
        raise ConfigError(f"model_config is not a JSON object ({error.msg})", where="model_config", fix='write it as {"model_type": "gpt2", ...}.') from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError("model_config needs a model_type", where="model_config", fix='add "model_type": "gpt2" (or openai-gpt).')
    return config


def _offline_hint(name: str, error: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load '{name}' ({first_line(error)})",
        where=name,
        fix="check the name; offline, download it on a machine with network access "
        f"(huggingface-cli download {name} --local-dir DIR) and pass DIR, or build a model from a config "
        "with model_config and tokenizer_name_or_path.",
    )


def load_tokenizer(model_args: ModelArguments):
    """The tokenizer of ``tokenizer_name_or_path`` (or of the model), with a clear error offline."""
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    gguf = {} if model_args.tokenizer_name_or_path or not model_args.gguf_file else {"gguf_file": model_args.gguf_file}
    try:
        return AutoTokenizer.from_pretrained(name, revision=model_args.revision, trust_remote_code=model_args.trust_remote_code, **gguf)
    except (OSError, ValueError) as error:
        raise _offline_hint(name, error) from None


def base_config(model_args: ModelArguments):
    """The config of the model to fine-tune (built from ``model_config``, or read from the checkpoint), no weights."""
    config_dict = model_config_dict(model_args)
    if config_dict is not None:
        config_dict = dict(config_dict)
        return AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    options = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
    if model_args.gguf_file:
        options["gguf_file"] = model_args.gguf_file
    try:
        return AutoConfig.from_pretrained(model_args.model_name_or_path, **options)
    except (OSError, ValueError) as error:
        raise _offline_hint(model_args.model_name_or_path, error) from None


def _pretrained(model_args: ModelArguments, config):
    """The pretrained weights of ``model_args`` in persona's class for ``config`` (a GGUF de-quantized to floats)."""
    options = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
    if model_args.gguf_file:
        options.update(gguf_file=model_args.gguf_file, quantization_config=GgufConfig(dequantize=True))
    try:
        model = model_class(config.model_type).from_pretrained(model_args.model_name_or_path, config=config, **options)
    except (OSError, ValueError) as error:
        raise _offline_hint(model_args.model_name_or_path, error) from None
    if getattr(model, "hf_quantizer", None) is not None and model_args.gguf_file:
        # De-quantized on load: plain float weights that train and save as safetensors like any other.
        model.hf_quantizer.remove_quantization_config(model)
    return model


def load_for_training(model_args: ModelArguments):
    """The model and tokenizer to fine-tune: special tokens added, embeddings resized (new rows = mean of the old).

    With ``model_config`` a fresh model is built from that config (no weights downloaded).
    """
    tokenizer = load_tokenizer(model_args)
    added = add_special_tokens(tokenizer)
    config = base_config(model_args)
    if model_args.model_config is not None:
        config.vocab_size = len(tokenizer)
        model = model_class(config.model_type)(config)
    else:
        model = _pretrained(model_args, config)
    resize_embeddings(model, tokenizer)
    model.config.persona_leading_space = wants_leading_space(tokenizer)  # saved: eval and chat encode texts alike
    ids = special_ids(tokenizer)
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = ids.pad, ids.bos, ids.eos
    logger.info("Added %d special tokens; vocabulary %d", added, len(tokenizer))
    return model, tokenizer


def load_trained(name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    """A persona model and its tokenizer, from a folder or a Hub id (a clear error if it lacks the special tokens).

    A checkpoint of transfer-learning-conv-ai (the five special tokens, no persona fields in its config) is
    fed as that code fed it: token types, and texts encoded without a leading space.
    """
    args = ModelArguments(model_name_or_path=name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    return _trained(args, load_tokenizer(args))


def _trained(args: ModelArguments, tokenizer):
    """The persona model of ``args`` (its tokenizer already loaded), fed as it was trained."""
    name_or_path, revision, trust_remote_code = args.model_name_or_path, args.revision, args.trust_remote_code
    special_ids(tokenizer)
    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
        model = model_class(config.model_type).from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _offline_hint(name_or_path, error) from None
    if hasattr(config, "persona_leading_space"):
        tokenizer.persona_leading_space = config.persona_leading_space
    elif not hasattr(config, "persona_token_types"):
        logger.info("%s has no persona fields in its config: fed as transfer-learning-conv-ai feeds its checkpoints", name_or_path)
        tokenizer.persona_leading_space = False
    return model.eval(), tokenizer


def load_for_evaluation(model_args: ModelArguments):
    """The model to evaluate, its tokenizer, and whether it is a prompted baseline: a persona model (or a reference
    checkpoint) as :func:`load_trained` loads it, else, for a causal LM without persona's tokens that has a chat
    template (a Hub chat model, a local folder, a GGUF), the model as it is, to be prompted through that template."""
    tokenizer = load_tokenizer(model_args)
    if has_persona_tokens(tokenizer):
        return (*_trained(model_args, tokenizer), False)
    if not tokenizer.chat_template:
        special_ids(tokenizer)  # the error that says which tokens are missing and how to get a persona model
    logger.info("%s has no persona tokens: evaluated as a prompted baseline through its chat template", model_args.model_name_or_path)
    return _pretrained(model_args, base_config(model_args)).eval(), tokenizer, True


def uses_token_types(config, requested: bool | None = None) -> bool:
    """Whether to feed token types: as ``requested`` (``use_token_types``) if given, else as the model was trained
    (``persona_token_types`` in its config), and yes for a model persona has not trained yet (as TransferTransfo)."""
    return bool(getattr(config, "persona_token_types", True)) if requested is None else requested


def max_positions(config) -> int:
    """How many positions the model has (``n_positions`` for GPT-2/openai-gpt, ``max_position_embeddings`` else)."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ModelLoadError("the model config gives no maximum number of positions", where="model config", fix="set n_positions.")
