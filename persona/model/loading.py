"""Loading models and tokenizers into a :class:`LoadedModel`: a base model to fine-tune, a trained persona model
(or a reference checkpoint), or a causal LM to evaluate as a prompted baseline.

Local folders, Hub ids (with ``revision``), GGUF checkpoints (de-quantized on load) and fresh models built
from a ``model_config``; offline, a clear error that says what is missing and how to supply it. Every command
loads through here and reads the model's facts (its layout and special tokens, positions, token types) from the
:class:`LoadedModel`, never again from the model: the layout is decided here, once (:func:`layout_for_training`
from the recipe, :func:`trained_layout` from a saved model's :class:`~persona.model.facts.PersonaFacts`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoTokenizer, GgufConfig

from persona.configs import INFERENCE_DTYPES, ModelArguments
from persona.data.input_layouts import ChatTemplateLayout, Layout, ReferenceLayout, layout_class
from persona.data.special_tokens import SpecialIds, has_persona_tokens, resize_embeddings, special_ids
from persona.errors import ConfigError, ModelLoadError, first_line
from persona.model.dual_heads import init_likelihood_prior, model_class
from persona.model.facts import PersonaFacts
from persona.model.packed_linears import pack_linears

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model with its tokenizer and the facts every command needs, decided once at load.

    ``layout``: how a turn becomes the model's input (a :class:`~persona.data.input_layouts.Layout` on this
    tokenizer, holding the special ids); ``max_positions``: the longest input; ``token_types``: whether the inputs
    carry speaker embeddings (as trained, or as ``use_token_types`` asks); ``facts``: what training saved
    (:class:`~persona.model.facts.PersonaFacts`); ``prompted``: a causal LM that persona never trained, prompted
    through its own chat template (its multiple-choice head is untrained, so only its likelihood ranks); ``name``:
    what it was loaded from.
    """

    model: object
    tokenizer: object
    layout: Layout
    max_positions: int
    token_types: bool
    facts: PersonaFacts = PersonaFacts()
    prompted: bool = False
    name: str = ""

    @property
    def ids(self) -> SpecialIds:
        """The special tokens' ids of the model's layout."""
        return self.layout.ids


def _offline_hint(name: str, error: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load '{name}' ({first_line(error)})",
        where=name,
        fix="check the name; offline, download it on a machine with network access "
        f"(hf download {name} --local-dir DIR) and pass DIR, or build a model from a config with model_config and "
        "tokenizer_name_or_path; set HF_HUB_OFFLINE=1 on a machine without network, so that a load fails at once "
        "instead of retrying the Hub.",
    )


def _hub_options(model_args: ModelArguments) -> dict:
    return {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}


def load_tokenizer(model_args: ModelArguments):
    """The tokenizer of ``tokenizer_name_or_path`` (or of the model), with a clear error offline."""
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    gguf = {} if model_args.tokenizer_name_or_path or not model_args.gguf_file else {"gguf_file": model_args.gguf_file}
    try:
        return AutoTokenizer.from_pretrained(name, **_hub_options(model_args), **gguf)
    except (OSError, ValueError) as error:
        raise _offline_hint(name, error) from None


def layout_for_training(model_args: ModelArguments, input_layout: str) -> tuple[Layout, int]:
    """The layout (on its tokenizer) a model is fine-tuned in, and how many special tokens were added to the tokenizer:
    the reference layout's five; a chat template's tokenizer as it is. persona-data prepares with the same one, so
    that persona-train finds its cache."""
    tokenizer, layout = load_tokenizer(model_args), layout_class(input_layout)
    added = layout.prepare_tokenizer(tokenizer)
    return layout.for_tokenizer(tokenizer), added


def base_config(model_args: ModelArguments):
    """The config of the model (built from ``model_config``, or read from the checkpoint), no weights."""
    if model_args.model_config is not None:
        config = dict(model_args.model_config)
        return AutoConfig.for_model(config.pop("model_type"), **config)
    gguf = {"gguf_file": model_args.gguf_file} if model_args.gguf_file else {}
    try:
        return AutoConfig.from_pretrained(model_args.model_name_or_path, **_hub_options(model_args), **gguf)
    except (OSError, ValueError) as error:
        raise _offline_hint(model_args.model_name_or_path, error) from None


def _pretrained(model_args: ModelArguments, config):
    """The pretrained weights of ``model_args`` in persona's class for ``config`` (a GGUF de-quantized to floats), in
    the precision ``dtype`` names."""
    options = {**_hub_options(model_args), "dtype": INFERENCE_DTYPES[model_args.dtype]}
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


def max_positions(config) -> int:
    """How many positions the model has (``n_positions`` for GPT-2/openai-gpt, ``max_position_embeddings`` else)."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ModelLoadError(
        "the model config gives no maximum number of positions", where="model config", fix="set n_positions."
    )


def load_for_training(
    model_args: ModelArguments, use_token_types: bool | None = None, input_layout: str = ReferenceLayout.name
) -> LoadedModel:
    """The model to fine-tune in ``input_layout``, its facts saved in its config so that evaluation, chat and serving
    feed it alike: the layout, whether it takes token types, the leading-space rule and the likelihood prior.

    In the reference layout the five special tokens are added and the embeddings resized (new rows = mean of the
    old); in the chat-template layout the tokenizer stays as it is. With ``model_config`` a fresh model is built from
    that config (no weights downloaded); with ``likelihood_prior`` the multiple-choice score starts as the
    likelihood ranking. A persona model given as the base keeps the token types it was trained with unless
    ``use_token_types`` says otherwise.
    """
    if model_args.dtype != "auto":
        raise ConfigError(
            f"dtype {model_args.dtype} is for chatting, evaluating and serving; training loads the checkpoint's own",
            where="dtype",
            fix="drop dtype; train in mixed precision with bf16: true (or fp16: true on a GPU).",
        )
    layout, added = layout_for_training(model_args, input_layout)
    tokenizer, ids = layout.tokenizer, layout.ids
    config = base_config(model_args)
    facts = PersonaFacts(
        layout=layout.name,
        token_types=layout.token_types(use_token_types, PersonaFacts.of(config).token_types),
        leading_space=layout.leading_space,
        likelihood_prior=model_args.likelihood_prior,
        prior_pmi_weight=model_args.prior_pmi_weight,
    )
    facts.save(config)
    if model_args.model_config is not None:
        config.vocab_size = len(tokenizer)
        model = model_class(config.model_type)(config)
    else:
        model = _pretrained(model_args, config)
    resize_embeddings(model, tokenizer)
    if model_args.likelihood_prior:
        init_likelihood_prior(model)
    model.config.pad_token_id, model.config.eos_token_id = ids.pad, ids.eos
    if ids.bos is not None:
        model.config.bos_token_id = ids.bos
    logger.info("Input layout %s; %d special tokens added; vocabulary %d", layout.name, added, len(tokenizer))
    return LoadedModel(
        model,
        tokenizer,
        layout,
        max_positions(model.config),
        facts.token_types,
        facts,
        name=model_args.model_name_or_path,
    )


def refuse_training_fields(model_args: ModelArguments, command: str) -> None:
    """A :class:`ConfigError` for a model field that only training uses, given to a command that loads a trained
    model."""
    fields = model_args.training_only_fields()
    if fields:
        raise ConfigError(
            f"{', '.join(fields)} only appl{'ies' if len(fields) == 1 else 'y'} when training; {command} loads a "
            "trained model",
            where="command line",
            fix=f"drop --{' --'.join(fields)}, or give persona-train the model to train.",
        )


def trained_layout(tokenizer, facts: PersonaFacts) -> Layout:
    """The layout a model with ``facts`` was trained in, on its ``tokenizer``, with a clear error if the tokenizer
    lacks what that layout needs."""
    return layout_class(facts.layout).for_tokenizer(tokenizer, facts.leading_space)


def _trained(
    model_args: ModelArguments, tokenizer, config, use_token_types: bool | None, weights: bool = True
) -> LoadedModel:
    """The persona model of ``model_args`` (its tokenizer and config already loaded), fed as it was trained; without
    ``weights``, its facts alone (``model`` None)."""
    facts = PersonaFacts.read(config)
    if facts is None:
        logger.info(
            "%s has no persona facts in its config: fed as transfer-learning-conv-ai feeds its checkpoints",
            model_args.model_name_or_path,
        )
        facts = PersonaFacts()
    layout = trained_layout(tokenizer, facts)
    token_types = layout.token_types(use_token_types, facts.token_types)
    model = _pretrained(model_args, config).eval() if weights else None
    return LoadedModel(
        model, tokenizer, layout, max_positions(config), token_types, facts, name=model_args.model_name_or_path
    )


def load_trained(model_args: ModelArguments, use_token_types: bool | None = None) -> LoadedModel:
    """A persona model and its tokenizer (a folder, a Hub id, a GGUF file in either), in the layout it was trained in,
    with a clear error if it lacks what that layout needs; ``use_token_types`` None feeds it as it was trained.

    A checkpoint of transfer-learning-conv-ai (the five special tokens, no persona fields in its config) is
    fed as that code fed it: token types, and texts encoded without a leading space.
    """
    return _trained(model_args, load_tokenizer(model_args), base_config(model_args), use_token_types)


def load_for_inference(
    model_args: ModelArguments, use_token_types: bool | None = None, weights: bool = True
) -> LoadedModel:
    """The model to evaluate, chat with or serve: a persona model (or a reference checkpoint) as :func:`load_trained`
    loads it, else, for a causal LM that persona never trained but that has a chat template (a Hub chat model, a
    local folder, a GGUF), the model as it is, prompted through that template (no token types): a user talks to the
    model before training as after. Without ``weights``, the tokenizer and the facts alone (``model`` None: what
    persona-serve needs in front of an engine that holds the weights)."""
    tokenizer, config = load_tokenizer(model_args), base_config(model_args)
    if PersonaFacts.read(config) is not None or has_persona_tokens(tokenizer):
        return _packed(_trained(model_args, tokenizer, config, use_token_types, weights))
    if not tokenizer.chat_template:
        special_ids(tokenizer)  # the error that says which tokens are missing and how to get a persona model
    logger.info(
        "%s is not a persona model: prompted through its chat template (the persona as the system message)",
        model_args.model_name_or_path,
    )
    layout = ChatTemplateLayout.for_tokenizer(tokenizer)
    facts = PersonaFacts(layout.name, layout.token_types(use_token_types), layout.leading_space)
    model = _pretrained(model_args, config).eval() if weights else None
    name = model_args.model_name_or_path
    loaded = LoadedModel(model, tokenizer, layout, max_positions(config), False, facts, prompted=True, name=name)
    return _packed(loaded)


def _packed(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` with its linear layers packed for oneDNN where it runs on the CPU (no accelerator here; in bfloat16,
    :func:`~persona.model.packed_linears.pack_linears`): the same numbers, sooner (``benchmarks/decode_step.py``)."""
    packed = 0 if loaded.model is None or torch.accelerator.is_available() else pack_linears(loaded.model)
    if packed:
        logger.info("%d linear layers of %s packed for oneDNN", packed, loaded.name)
    return loaded


TOKENIZER_LIMIT = 1024  # where the tokenizer states no limit of its own


def preparation_length(model_args: ModelArguments, tokenizer, model_named: bool = True) -> int:
    """The longest input to prepare a corpus for without loading weights: the model's positions, as persona-train
    prepares it (so that both share the cache).

    Without a model named (``model_named`` false: a tokenizer alone), the tokenizer's own limit, no model looked for;
    where the model's config cannot be read (offline, no ``model_config``), that limit too, with a warning that
    training will prepare again if the model's positions differ.
    """
    limit = min(getattr(tokenizer, "model_max_length", None) or TOKENIZER_LIMIT, TOKENIZER_LIMIT)
    if not model_named:
        logger.info(
            "No model named: inputs cut to the tokenizer's %d tokens. Pass the model (or model_config) persona-train "
            "will train, so that it finds this cache.",
            limit,
        )
        return limit
    try:
        return max_positions(base_config(model_args))
    except ModelLoadError as error:
        logger.warning(
            "Inputs cut to the tokenizer's %d tokens, not the model's positions (%s); persona-train prepares the "
            "corpus again if they differ. Pass the recipe's model or model_config to share the cache.",
            limit,
            error.what,
        )
        return limit
