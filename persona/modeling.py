"""Double-heads models (language modelling + multiple choice) and their dual forward pass.

The GPT-2 family (gpt2, distilgpt2, DialoGPT) loads as ``GPT2DoubleHeadsModel`` and openai-gpt as
``OpenAIGPTDoubleHeadsModel``, chosen from the checkpoint's ``model_type``; any other decoder-only model
(Llama, SmolLM2, Qwen2...) as its ``AutoModelForCausalLM`` class with :class:`CausalDualHeads` (a
multiple-choice head, token types through the word embeddings). Each is given :class:`PersonaDualHeads`,
which adds one entry to ``forward``: a persona batch (from :class:`persona.data.PersonaCollator`)
returns the gold reply's token NLL and the candidates' scores.

Two ways to compute them (``forward_mode``):

- ``shared_prefix`` (fast): the persona+history prefix runs once per turn, its key/value cache is
  expanded over the candidates, which run as continuations at their true positions; LM logits are
  computed only where labels are. Needs a model with a key/value cache (all but openai-gpt, which runs
  the full sequences but still computes LM logits only where labels are).
- ``classic``: every candidate as a full sequence through the model's own forward, logits for every
  token of every candidate, as the reference implementation did.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GgufConfig,
    GPT2DoubleHeadsModel,
    OpenAIGPTDoubleHeadsModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import ModelOutput

from persona.chat_template import add_chat_template
from persona.configs import ModelArguments, model_config_dict
from persona.data.layout import IGNORE_INDEX
from persona.errors import ModelLoadError
from persona.generation import DecodingArguments
from persona.special_tokens import add_special_tokens, resize_embeddings, special_ids

logger = logging.getLogger(__name__)


@dataclass
class DualOutput(ModelOutput):
    """What the dual forward returns, per example: the gold reply's summed token NLL and token count, and
    the multiple-choice logits (slots that pad a turn's candidates set to the dtype's minimum)."""

    nll_sum: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    mc_logits: torch.Tensor | None = None


@dataclass
class FullOutput(ModelOutput):
    """Logits of every token of every candidate and the multiple-choice logits (the classic path)."""

    logits: torch.Tensor | None = None
    mc_logits: torch.Tensor | None = None


def _gold_nll(hidden: torch.Tensor, labels: torch.Tensor, gold: torch.Tensor, lm_head) -> tuple[torch.Tensor, torch.Tensor]:
    """Token NLL of the gold candidate, LM logits computed only at the positions whose next token has a label.

    ``hidden``: [B, C, L, H]; ``labels``: [B, C, L]; ``gold``: [B]. Returns the per-example NLL sum and count.
    """
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    gold_hidden, gold_labels = hidden[rows, gold, :-1], labels[rows, gold, 1:]
    where = gold_labels != IGNORE_INDEX
    logits = lm_head(gold_hidden[where]).float()
    nll = F.cross_entropy(logits, gold_labels[where], reduction="none")
    owner = where.nonzero()[:, 0]
    nll_sum = torch.zeros(hidden.shape[0], device=hidden.device, dtype=nll.dtype).index_add(0, owner, nll)
    return nll_sum, where.sum(-1)


def _picked(hidden: torch.Tensor, mc_token_ids: torch.Tensor) -> torch.Tensor:
    """The hidden state [B, C, H] at each candidate's ``mc_token_ids`` of hidden states [B, C, L, H]."""
    batch, count, _, width = hidden.shape
    return hidden.gather(2, mc_token_ids[:, :, None, None].expand(batch, count, 1, width)).squeeze(2)


def _mc_logits(model, hidden: torch.Tensor, mc_token_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The multiple-choice head on the hidden state at each candidate's ``mc_token_ids`` ([B, C])."""
    logits = model.persona_mc_logits(_picked(hidden, mc_token_ids)).float()
    return logits.masked_fill(~valid.bool(), torch.finfo(logits.dtype).min)


def _flat(tensor: torch.Tensor | None, length: int) -> torch.Tensor | None:
    return None if tensor is None else tensor.reshape(-1, length)


def _classic(model, input_ids, attention_mask, labels, mc_token_ids, candidate_valid, mc_labels, token_type_ids=None) -> DualOutput:
    output = model.forward_full(
        input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask, mc_token_ids=mc_token_ids
    )
    shift_logits, shift_labels = output.logits[..., :-1, :].float(), labels[..., 1:]
    nll = F.cross_entropy(shift_logits.flatten(0, -2), shift_labels.flatten(), reduction="none", ignore_index=IGNORE_INDEX)
    nll_sum = nll.view(shift_labels.shape).sum((1, 2))
    tokens = (shift_labels != IGNORE_INDEX).sum((1, 2))
    mc_logits = output.mc_logits.float().masked_fill(~candidate_valid.bool(), torch.finfo(torch.float32).min)
    return DualOutput(nll_sum=nll_sum, tokens=tokens, mc_logits=mc_logits)


def _full_sequences(model, input_ids, attention_mask, labels, mc_token_ids, candidate_valid, mc_labels, token_type_ids=None) -> DualOutput:
    batch, count, length = input_ids.shape
    hidden = model.persona_backbone(
        input_ids=input_ids.view(-1, length), token_type_ids=_flat(token_type_ids, length), attention_mask=attention_mask.view(-1, length)
    ).last_hidden_state.view(batch, count, length, -1)
    nll_sum, tokens = _gold_nll(hidden, labels, mc_labels, model.lm_head)
    return DualOutput(nll_sum=nll_sum, tokens=tokens, mc_logits=_mc_logits(model, hidden, mc_token_ids, candidate_valid))


def _shared_prefix(
    model, prefix_ids, prefix_mask, candidate_ids, candidate_mask, labels, mc_token_ids, candidate_valid, mc_labels, prefix_type_ids=None, candidate_type_ids=None
) -> DualOutput:
    batch, count, length = candidate_ids.shape
    prefix_positions = torch.arange(prefix_ids.shape[1], device=prefix_ids.device).expand_as(prefix_ids)
    prefix = model.persona_backbone(
        input_ids=prefix_ids, token_type_ids=prefix_type_ids, attention_mask=prefix_mask, position_ids=prefix_positions, use_cache=True
    )
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(count)
    starts = prefix_mask.sum(-1).repeat_interleave(count)
    positions = starts[:, None] + torch.arange(length, device=prefix_ids.device)
    hidden = model.persona_backbone(
        input_ids=candidate_ids.view(-1, length),
        token_type_ids=_flat(candidate_type_ids, length),
        attention_mask=torch.cat([prefix_mask.repeat_interleave(count, 0), candidate_mask.view(-1, length)], dim=1),
        position_ids=positions,
        cache=cache,
        use_cache=False,
    ).last_hidden_state.view(batch, count, length, -1)
    nll_sum, tokens = _gold_nll(hidden, labels, mc_labels, model.lm_head)
    return DualOutput(nll_sum=nll_sum, tokens=tokens, mc_logits=_mc_logits(model, hidden, mc_token_ids, candidate_valid))


class PersonaDualHeads:
    """Mixin for a language model with a multiple-choice head: ``forward(**persona_batch, forward_mode=...)``
    gives a :class:`DualOutput`; any other call is the model's own forward.

    A family provides ``persona_backbone`` (the transformer body with token types: hidden states and,
    with ``use_cache``, the key/value cache) and ``persona_mc_logits`` (the head on picked hidden states).
    """

    supports_shared_prefix = False

    def forward(self, *args, forward_mode: str | None = None, **kwargs):
        """A persona batch with ``forward_mode`` gives a :class:`DualOutput`; anything else, the base forward."""
        if forward_mode is None:
            return self.forward_full(*args, **kwargs)
        if "prefix_ids" in kwargs:
            return _shared_prefix(self, **kwargs)
        if forward_mode == "classic":
            return _classic(self, **kwargs)
        return _full_sequences(self, **kwargs)


class GPTDualHeads(PersonaDualHeads):
    """GPT2DoubleHeadsModel / OpenAIGPTDoubleHeadsModel: their own token types and multiple-choice head."""

    def persona_backbone(self, **kwargs):
        """The transformer body (token types are GPT's own input)."""
        return self.transformer(**kwargs)

    def persona_mc_logits(self, picked: torch.Tensor) -> torch.Tensor:
        """GPT's SequenceSummary head on the picked hidden states [B, C, H] -> [B, C]."""
        return self.multiple_choice_head(picked[:, :, None], torch.zeros(picked.shape[:2], dtype=torch.long, device=picked.device)).squeeze(-1)

    def forward_full(self, *args, **kwargs):
        """The base double-heads model's own forward (all logits)."""
        return super(PersonaDualHeads, self).forward(*args, **kwargs)


class MultipleChoiceHead(nn.Module):
    """GPT-2's multiple-choice head for any model: dropout, then a linear map of a hidden state to one score."""

    def __init__(self, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores [...] of hidden states [..., H]."""
        return self.summary(self.dropout(hidden)).squeeze(-1)


class CausalDualHeads(PersonaDualHeads):
    """Any ``AutoModelForCausalLM`` plus a :class:`MultipleChoiceHead` (``multiple_choice_head``).

    Token types are added as GPT-2 adds them: the word embedding of each token plus the word embedding of
    its token type (``<speaker1>``, ``<speaker2>``), so every model gets the same speaker signal.
    """

    supports_shared_prefix = True

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.multiple_choice_head = MultipleChoiceHead(config.hidden_size, getattr(config, "summary_first_dropout", 0.1))

    def _embed(self, input_ids, token_type_ids):
        embed = self.get_input_embeddings()
        return embed(input_ids) + embed(token_type_ids)

    def persona_backbone(self, *, input_ids, token_type_ids=None, **kwargs):
        """The decoder body on the input ids (plus token types through the word embeddings)."""
        if token_type_ids is None:
            return self.base_model(input_ids=input_ids, **kwargs)
        return self.base_model(inputs_embeds=self._embed(input_ids, token_type_ids), **kwargs)

    def persona_mc_logits(self, picked: torch.Tensor) -> torch.Tensor:
        """The multiple-choice head on the picked hidden states [B, C, H] -> [B, C]."""
        return self.multiple_choice_head(picked)

    def forward_full(self, input_ids=None, token_type_ids=None, mc_token_ids=None, **kwargs):
        """The causal LM's own forward (all logits), token types folded into the embeddings; with
        ``mc_token_ids`` ([B, C] for inputs [B, C, L]) also ``mc_logits``, as GPT2DoubleHeadsModel gives."""
        if mc_token_ids is None:
            if token_type_ids is not None:
                kwargs["inputs_embeds"], input_ids = self._embed(input_ids, token_type_ids), None
            return super(PersonaDualHeads, self).forward(input_ids=input_ids, **kwargs)
        batch, count, length = input_ids.shape
        mask = kwargs.pop("attention_mask")
        hidden = self.persona_backbone(
            input_ids=input_ids.view(-1, length), token_type_ids=_flat(token_type_ids, length), attention_mask=mask.view(-1, length), **kwargs
        ).last_hidden_state
        hidden = hidden.view(batch, count, length, -1)
        return FullOutput(logits=self.lm_head(hidden), mc_logits=self.persona_mc_logits(_picked(hidden, mc_token_ids)))


def _with_extra_arguments(signature: inspect.Signature, names: tuple[str, ...]) -> inspect.Signature:
    """The base forward's signature plus keyword arguments ``names`` (``generate`` checks its arguments against it)."""
    present = set(signature.parameters)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names if name not in present]
    tail = [p for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    return signature.replace(parameters=[*params, *extra, *tail])


@functools.cache
def persona_class(base: type) -> type:
    """The persona double-heads class of a transformers model class (GPT's double-heads, or any causal LM).

    Named like its base so that ``save_pretrained`` records the plain transformers architecture: the
    saved model loads with plain transformers, no persona code needed (a causal LM drops the head).
    """
    family = GPTDualHeads if base in (GPT2DoubleHeadsModel, OpenAIGPTDoubleHeadsModel) else CausalDualHeads
    shared_prefix = base is not OpenAIGPTDoubleHeadsModel
    cls = type(base.__name__, (family, base), {"__module__": __name__, "supports_shared_prefix": shared_prefix})

    def forward(self, *args, forward_mode: str | None = None, **kwargs):
        return PersonaDualHeads.forward(self, *args, forward_mode=forward_mode, **kwargs)

    forward.__signature__ = _with_extra_arguments(inspect.signature(base.forward), ("forward_mode", "token_type_ids"))
    forward.__doc__ = PersonaDualHeads.forward.__doc__
    cls.forward = forward
    return cls


DOUBLE_HEADS = {"gpt2": GPT2DoubleHeadsModel, "openai-gpt": OpenAIGPTDoubleHeadsModel}


def _offline_hint(name: str, error: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load '{name}' ({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})",
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


def model_class(model_type: str) -> type:
    """The persona double-heads class of a ``model_type``: GPT's own double-heads model, else the causal LM's."""
    if model_type in DOUBLE_HEADS:
        return persona_class(DOUBLE_HEADS[model_type])
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if name is None:
        raise ModelLoadError(
            f"no causal language model for model_type '{model_type}'",
            where="model_name_or_path",
            fix="use a decoder-only model (GPT-2, DialoGPT, openai-gpt, Llama, SmolLM2, Qwen2, Mistral...).",
        )
    return persona_class(getattr(transformers, name))


def load_for_training(model_args: ModelArguments):
    """The model and tokenizer to fine-tune: special tokens added, embeddings resized (new rows = mean of the old).

    With ``model_config`` a fresh model is built from that config (no weights downloaded).
    """
    tokenizer = load_tokenizer(model_args)
    added = add_special_tokens(tokenizer)
    config_dict = model_config_dict(model_args)
    if config_dict is not None:
        config_dict = dict(config_dict)
        config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        config.vocab_size = len(tokenizer)
        model = model_class(config.model_type)(config)
    else:
        options = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
        if model_args.gguf_file:
            options["gguf_file"] = model_args.gguf_file
        try:
            config = AutoConfig.from_pretrained(model_args.model_name_or_path, **options)
            gguf = {"quantization_config": GgufConfig(dequantize=True)} if model_args.gguf_file else {}
            model = model_class(config.model_type).from_pretrained(model_args.model_name_or_path, config=config, **options, **gguf)
        except (OSError, ValueError) as error:
            raise _offline_hint(model_args.model_name_or_path, error) from None
        if getattr(model, "hf_quantizer", None) is not None and model_args.gguf_file:
            # De-quantized on load: plain float weights that train and save as safetensors like any other.
            model.hf_quantizer.remove_quantization_config(model)
    resize_embeddings(model, tokenizer)
    ids = special_ids(tokenizer)
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = ids.pad, ids.bos, ids.eos
    # Saved with the model: plain transformers then prompts it with the chat template and decodes as
    # the seed's interact.py did (sampling, temperature 0.7, top-p 0.9, other special tokens suppressed).
    add_chat_template(tokenizer)
    model.generation_config = DecodingArguments().generation_config(tokenizer)
    logger.info("Added %d special tokens; vocabulary %d", added, len(tokenizer))
    return model, tokenizer


def load_trained(name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    """A persona model and its tokenizer, from a folder or a Hub id (a clear error if it lacks the special tokens)."""
    args = ModelArguments(model_name_or_path=name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(args)
    special_ids(tokenizer)
    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
        model = model_class(config.model_type).from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _offline_hint(name_or_path, error) from None
    return model.eval(), tokenizer


def uses_token_types(config) -> bool:
    """Whether the model was trained with token types (``persona_token_types`` in its config; default yes)."""
    return bool(getattr(config, "persona_token_types", True))


def max_positions(config) -> int:
    """How many positions the model has (``n_positions`` for GPT-2/openai-gpt, ``max_position_embeddings`` else)."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ModelLoadError("the model config gives no maximum number of positions", where="model config", fix="set n_positions.")
