"""Double-heads models (language modelling + multiple choice) and their dual forward pass.

The GPT-2 family (gpt2, distilgpt2, DialoGPT) loads as ``GPT2DoubleHeadsModel`` and openai-gpt as
``OpenAIGPTDoubleHeadsModel``, chosen from the checkpoint's ``model_type``; any other decoder-only model
(Llama, SmolLM2, Qwen2...) as its ``AutoModelForCausalLM`` class with :class:`CausalDualHeads` (a
multiple-choice head, token types through the word embeddings). Each is given :class:`PersonaDualHeads`,
which adds one entry to ``forward``: a persona batch (from :class:`persona.data.PersonaCollator`)
returns the gold reply's token NLL and the candidates' scores.

Two ways to compute them (``forward_mode``):

- ``shared_prefix`` (fast): one packed row per turn, the persona+history prefix once and every candidate
  after it, each candidate at its true positions and attending (through a block causal mask) to the
  prefix and to itself only; no candidate is padded, and LM logits are computed only where labels are.
  Needs a body that takes a custom 4D attention mask (all but openai-gpt, which runs the full sequences
  but still computes LM logits only where labels are).
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
    GenerationMixin,
    GgufConfig,
    GPT2DoubleHeadsModel,
    OpenAIGPTDoubleHeadsModel,
    OpenAIGPTLMHeadModel,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, and_masks, causal_mask_function
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import ModelOutput

from persona.chat_template import add_chat_template
from persona.configs import ModelArguments, model_config_dict
from persona.data.layout import IGNORE_INDEX
from persona.data.tokenize import wants_leading_space
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


def _label_nll(hidden: torch.Tensor, labels: torch.Tensor, lm_head) -> tuple[torch.Tensor, torch.Tensor]:
    """Token NLL of the labelled tokens, LM logits computed only at the positions whose next token has a label.

    ``hidden``: [B, L, H]; ``labels``: [B, L]. Returns the per-row NLL sum and labelled-token count.
    """
    targets = labels[:, 1:]
    where = targets != IGNORE_INDEX
    logits = lm_head(hidden[:, :-1][where]).float()
    nll = F.cross_entropy(logits, targets[where], reduction="none")
    owner = where.nonzero()[:, 0]
    nll_sum = torch.zeros(hidden.shape[0], device=hidden.device, dtype=nll.dtype).index_add(0, owner, nll)
    return nll_sum, where.sum(-1)


def _picked(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The hidden states [B, C, H] at positions ``index`` [B, C] of hidden states [B, T, H]."""
    return hidden.gather(1, index[..., None].expand(*index.shape, hidden.shape[-1]))


def _candidate_ends(hidden: torch.Tensor, mc_token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classic hidden states [B, C, L, H] as rows [B, C*L, H], and each candidate's ``mc_token_ids`` as indices in them."""
    length = hidden.shape[2]
    offsets = torch.arange(hidden.shape[1], device=hidden.device) * length
    return hidden.flatten(1, 2), mc_token_ids + offsets


def _mc_logits(model, hidden: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The multiple-choice head on the hidden states [B, T, H] at each candidate's ``<eos>`` ``index`` ([B, C])."""
    logits = model.persona_mc_logits(_picked(hidden, index)).float()
    return logits.masked_fill(~valid.bool(), torch.finfo(logits.dtype).min)


def _flat(tensor: torch.Tensor | None, length: int) -> torch.Tensor | None:
    return None if tensor is None else tensor.reshape(-1, length)


def _classic(model, input_ids, attention_mask, labels, mc_token_ids, candidate_valid, mc_labels, token_type_ids=None) -> DualOutput:
    # The mask flattened to [B*C, L]: openai-gpt's own forward flattens the ids and types but not the mask.
    output = model.forward_full(
        input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=_flat(attention_mask, input_ids.shape[-1]), mc_token_ids=mc_token_ids
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
        inputs_embeds=model.persona_embeddings(input_ids.view(-1, length), _flat(token_type_ids, length)),
        attention_mask=attention_mask.view(-1, length),
        use_cache=False,
    ).last_hidden_state.view(batch, count, length, -1)
    rows = torch.arange(batch, device=input_ids.device)
    nll_sum, tokens = _label_nll(hidden[rows, mc_labels], labels[rows, mc_labels], model.lm_head)
    return DualOutput(nll_sum=nll_sum, tokens=tokens, mc_logits=_mc_logits(model, *_candidate_ends(hidden, mc_token_ids), candidate_valid))


def _block_causal_mask(model, block_ids: torch.Tensor, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask of a packed batch, in the form the model's attention implementation takes (SDPA's boolean,
    eager's additive): causal, padding out, and each token seeing the prefix (block 0) and its own block only.

    transformers passes a 4D mask through to every layer unchanged. The mask function is index-based, so
    it is built by broadcasting (``create_causal_mask`` would vmap a custom function, element by element).
    """

    def prefix_or_own_block(batch_idx, head_idx, q_idx, kv_idx):
        key_block = block_ids[batch_idx, kv_idx]
        return (key_block == 0) | (key_block == block_ids[batch_idx, q_idx])

    batch, length = block_ids.shape
    return ALL_MASK_ATTENTION_FUNCTIONS[model.config._attn_implementation](
        batch_size=batch, q_length=length, kv_length=length, mask_function=and_masks(causal_mask_function, prefix_or_own_block),
        attention_mask=attention_mask.bool(), allow_is_causal_skip=False, use_vmap=False, dtype=dtype, device=block_ids.device,
    )


def _shared_prefix(
    model, input_ids, attention_mask, position_ids, block_ids, labels, mc_token_ids, candidate_valid, mc_labels, token_type_ids=None
) -> DualOutput:
    embeds = model.persona_embeddings(input_ids, token_type_ids)
    mask = _block_causal_mask(model, block_ids, attention_mask, embeds.dtype)
    hidden = model.persona_backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False).last_hidden_state
    nll_sum, tokens = _label_nll(hidden, labels, model.lm_head)
    return DualOutput(nll_sum=nll_sum, tokens=tokens, mc_logits=_mc_logits(model, hidden, mc_token_ids, candidate_valid))


class PersonaDualHeads:
    """Mixin for a language model with a multiple-choice head: ``forward(**persona_batch, forward_mode=...)``
    gives a :class:`DualOutput`; any other call is the model's own forward.

    A family provides ``persona_mc_logits`` (the head on picked hidden states) and says whether its body
    takes a custom 4D attention mask (``packs_candidates``: the packed fast path).
    """

    packs_candidates = False

    def supports_shared_prefix(self) -> bool:
        """Whether the packed fast path applies: the body takes a custom 4D mask and its attention (eager or
        SDPA) honours it."""
        return self.packs_candidates and self.config._attn_implementation in ("eager", "sdpa")

    def persona_embeddings(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Word embeddings of the ids plus, as GPT-2 adds token types, the word embeddings of the types,
        looked up together (one gradient of the embedding matrix per batch, not one per lookup)."""
        embed = self.get_input_embeddings()
        if token_type_ids is None:
            return embed(input_ids)
        return embed(torch.stack([input_ids, token_type_ids])).sum(0)

    def persona_backbone(self, **kwargs):
        """The transformer body (no LM head): hidden states of ``inputs_embeds``."""
        return self.base_model(**kwargs)

    def forward(self, *args, forward_mode: str | None = None, **kwargs):
        """A persona batch with ``forward_mode`` gives a :class:`DualOutput`; anything else, the base forward."""
        if forward_mode is None:
            return self.forward_full(*args, **kwargs)
        if "block_ids" in kwargs:
            return _shared_prefix(self, **kwargs)
        if forward_mode == "classic":
            return _classic(self, **kwargs)
        return _full_sequences(self, **kwargs)


class GPTDualHeads(PersonaDualHeads):
    """GPT2DoubleHeadsModel / OpenAIGPTDoubleHeadsModel: their own token types and multiple-choice head."""

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

    packs_candidates = True

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.multiple_choice_head = MultipleChoiceHead(config.hidden_size, getattr(config, "summary_first_dropout", 0.1))

    def persona_mc_logits(self, picked: torch.Tensor) -> torch.Tensor:
        """The multiple-choice head on the picked hidden states [B, C, H] -> [B, C]."""
        return self.multiple_choice_head(picked)

    def forward_full(self, input_ids=None, token_type_ids=None, mc_token_ids=None, **kwargs):
        """The causal LM's own forward (all logits), token types folded into the embeddings; with
        ``mc_token_ids`` ([B, C] for inputs [B, C, L]) also ``mc_logits``, as GPT2DoubleHeadsModel gives."""
        if mc_token_ids is None:
            if token_type_ids is not None:
                kwargs["inputs_embeds"], input_ids = self.persona_embeddings(input_ids, token_type_ids), None
            return super(PersonaDualHeads, self).forward(input_ids=input_ids, **kwargs)
        batch, count, length = input_ids.shape
        mask = kwargs.pop("attention_mask")
        hidden = self.persona_backbone(
            inputs_embeds=self.persona_embeddings(input_ids.view(-1, length), _flat(token_type_ids, length)), attention_mask=mask.view(-1, length), **kwargs
        ).last_hidden_state
        hidden = hidden.view(batch, count, length, -1)
        return FullOutput(logits=self.lm_head(hidden), mc_logits=self.persona_mc_logits(_picked(*_candidate_ends(hidden, mc_token_ids))))


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
    attributes = {"__module__": __name__, "packs_candidates": True}
    bases = (family, base)
    if base is OpenAIGPTDoubleHeadsModel:
        # Its attention takes no custom 4D mask: it runs full sequences (LM logits still only where labels are).
        # Nor can it generate in transformers 5: it gets the generation of its language-model sibling.
        attributes.update(packs_candidates=False, prepare_inputs_for_generation=OpenAIGPTLMHeadModel.prepare_inputs_for_generation)
        bases = (family, base, GenerationMixin)
    cls = type(base.__name__, bases, attributes)

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
    resize_embeddings(model, tokenizer)
    model.config.persona_leading_space = wants_leading_space(tokenizer)  # saved: eval and chat encode texts alike
    ids = special_ids(tokenizer)
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = ids.pad, ids.bos, ids.eos
    # Saved with the model: plain transformers then prompts it with the chat template and decodes as
    # the seed's interact.py did (sampling, temperature 0.7, top-p 0.9, other special tokens suppressed).
    add_chat_template(tokenizer)
    model.generation_config = DecodingArguments().generation_config(tokenizer)
    logger.info("Added %d special tokens; vocabulary %d", added, len(tokenizer))
    return model, tokenizer


def load_trained(name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    """A persona model and its tokenizer, from a folder or a Hub id (a clear error if it lacks the special tokens).

    A checkpoint of transfer-learning-conv-ai (the five special tokens, no persona fields in its config) is
    fed as that code fed it: token types, and texts encoded without a leading space.
    """
    args = ModelArguments(model_name_or_path=name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(args)
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


def uses_token_types(config) -> bool:
    """Whether the model was trained with token types (``persona_token_types`` in its config; default yes)."""
    return bool(getattr(config, "persona_token_types", True))


def max_positions(config) -> int:
    """How many positions the model has (``n_positions`` for GPT-2/openai-gpt, ``max_position_embeddings`` else)."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ModelLoadError("the model config gives no maximum number of positions", where="model config", fix="set n_positions.")
