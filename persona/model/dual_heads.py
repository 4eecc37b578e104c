"""Double-heads models (language modelling + multiple choice) and their dual forward pass.

The GPT-2 family (gpt2, distilgpt2, DialoGPT) loads as ``GPT2DoubleHeadsModel`` and openai-gpt as
``OpenAIGPTDoubleHeadsModel``, chosen from the checkpoint's ``model_type``; any other decoder-only model
(Llama, SmolLM2, Qwen2...) as its ``AutoModelForCausalLM`` class with :class:`CausalDualHeads` (a
multiple-choice head, token types through the word embeddings). Each is given :class:`PersonaDualHeads`,
which adds one entry to ``forward``: a persona batch (from :class:`persona.data.PersonaCollator`)
returns the gold reply's token NLL and the candidates' scores.

Three paths (:class:`DualPath`) compute them; the trainer picks one, once, from the recipe's
``forward_mode`` and what the model supports (:func:`choose_dual_path`), and :func:`collator_for` gives the collator
that
builds its batches:

- ``DualPath.PACKED`` (``forward_mode: packed``, the default): one packed row per turn, the persona+history
  prefix once and every candidate after it, each candidate at its true positions and attending (through a
  block causal mask) to the prefix and to itself only; no candidate is padded, and LM logits are computed
  only where labels are. Needs a body whose attention takes a custom 4D mask (:meth:`PersonaDualHeads.packs`).
- ``DualPath.FULL_SEQUENCES`` (``packed`` for a model without that, openai-gpt): every candidate as a
  full sequence, LM logits still computed only where labels are.
- ``DualPath.CLASSIC`` (``forward_mode: classic``): every candidate as a full sequence through the model's own
  forward, logits for every token of every candidate, as the reference did.
"""

from __future__ import annotations

import enum
import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, GPT2DoubleHeadsModel, OpenAIGPTDoubleHeadsModel, OpenAIGPTLMHeadModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, and_masks, causal_mask_function
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import ModelOutput

from persona import configs
from persona.data.collator import CONTEXT_FREE, PERSONA_FREE, PERSONA_SWAP, WITH_PERSONA, PersonaCollator
from persona.data.layout import IGNORE_INDEX
from persona.data.special_tokens import SpecialIds
from persona.errors import ModelLoadError
from persona.model.facts import PersonaFacts

LOGIT_CHUNK = 1024  # positions whose vocabulary logits are made at once (see _chunked_nll)


class DualPath(str, enum.Enum):
    """The path of a persona batch through the model (the values of ``forward_mode`` are two of them)."""

    PACKED = configs.PACKED
    FULL_SEQUENCES = "full_sequences"
    CLASSIC = configs.CLASSIC


@dataclass
class DualOutput(ModelOutput):
    """What the dual forward returns, per example: the gold reply's summed token NLL and token count, and
    the multiple-choice logits (slots that pad a turn's candidates set to the dtype's minimum). Given
    ``candidate_labels``, also every candidate's summed token NLL and token count, [B, C] (likelihood ranking); given
    the collator's context-free batch, every candidate's summed token NLL after an empty conversation, [B, C]; given
    its swapped-persona batch, the gold reply's summed token NLL and token count after each other persona, [S]; asked
    to keep them, the LM logits (float32) before each token of each turn's gold reply, turn by turn, [N, vocabulary]
    (the history's labels left out), and the gold tokens they predict, [N]."""

    nll_sum: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    mc_logits: torch.Tensor | None = None
    candidate_nll_sum: torch.Tensor | None = None
    candidate_tokens: torch.Tensor | None = None
    context_free_nll_sum: torch.Tensor | None = None
    persona_swap_nll_sum: torch.Tensor | None = None
    persona_swap_tokens: torch.Tensor | None = None
    gold_logits: torch.Tensor | None = None
    gold_targets: torch.Tensor | None = None

    def mean_log_likelihood(self) -> torch.Tensor:
        """Each candidate's mean token log-likelihood after the conversation, [B, C]."""
        return -self.candidate_nll_sum / self.candidate_tokens.clamp(min=1)

    def pmi(self, weight: float) -> torch.Tensor:
        """Each candidate's pointwise mutual information with the conversation per token, [B, C]: its mean token
        log-likelihood after the conversation minus ``weight`` times its mean token log-likelihood after an empty one
        (a reply likely anywhere gains nothing from the context); ``weight`` 0 gives :meth:`mean_log_likelihood`."""
        if self.context_free_nll_sum is None:
            raise ValueError("PMI scores every candidate after an empty conversation too: the collator's empty_prefix")
        return (-self.candidate_nll_sum + weight * self.context_free_nll_sum) / self.candidate_tokens.clamp(min=1)


@dataclass
class FullOutput(ModelOutput):
    """Logits of every token of every candidate and the multiple-choice logits (the classic path)."""

    logits: torch.Tensor | None = None
    mc_logits: torch.Tensor | None = None


def _label_nll(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head, groups: torch.Tensor | None = None, count: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token NLL of the labelled tokens, LM logits computed only at the positions whose next token has a label.

    ``hidden``: [B, L, H]; ``labels``: [B, L]. Returns the NLL sum and labelled-token count of each row, or, with
    ``groups`` ([B, L]: the group of each labelled token, in ``range(count)``), of each group.
    """
    targets = labels[:, 1:]
    where = targets != IGNORE_INDEX
    nll = _chunked_nll(hidden[:, :-1][where], targets[where], lm_head)
    owner = where.nonzero()[:, 0] if groups is None else groups[:, 1:][where]
    size = hidden.shape[0] if groups is None else count
    nll_sum = torch.zeros(size, device=hidden.device, dtype=nll.dtype).index_add(0, owner, nll)
    return nll_sum, torch.zeros(size, device=hidden.device, dtype=torch.long).index_add(
        0, owner, torch.ones_like(owner)
    )


def _labelled_logits(hidden: torch.Tensor, labels: torch.Tensor, lm_head) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM logits (float32) [N, vocabulary] at the positions of ``hidden`` [B, L, H] whose next token has a label
    in ``labels`` [B, L], row by row, and those labels [N]."""
    labelled = labels[:, 1:] != IGNORE_INDEX
    return lm_head(hidden[:, :-1][labelled]).float(), labels[:, 1:][labelled]


def _token_nll(hidden: torch.Tensor, targets: torch.Tensor, lm_head) -> torch.Tensor:
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="none")


def _chunked_nll(hidden: torch.Tensor, targets: torch.Tensor, lm_head) -> torch.Tensor:
    """The NLL of each target token ([N]) from hidden states [N, H], the vocabulary's logits made
    :data:`LOGIT_CHUNK` positions at a time and, when training, made again in the backward pass instead of kept
    (activation checkpointing): a vocabulary of 50k by thousands of candidate tokens would otherwise hold gigabytes
    of logits and their gradients at once. The same values as one pass, row by row."""
    if len(hidden) <= LOGIT_CHUNK:
        return _token_nll(hidden, targets, lm_head)
    keep = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for start in range(0, len(hidden), LOGIT_CHUNK):
        chunk = (hidden[start : start + LOGIT_CHUNK], targets[start : start + LOGIT_CHUNK], lm_head)
        parts.append(checkpoint(_token_nll, *chunk, use_reentrant=False) if keep else _token_nll(*chunk))
    return torch.cat(parts)


def _picked(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The hidden states [B, C, H] at positions ``index`` [B, C] of hidden states [B, T, H]."""
    return hidden.gather(1, index[..., None].expand(*index.shape, hidden.shape[-1]))


def _candidate_ends(hidden: torch.Tensor, mc_token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classic hidden states [B, C, L, H] as rows [B, C*L, H], and each candidate's ``mc_token_ids`` as indices in
    them."""
    length = hidden.shape[2]
    offsets = torch.arange(hidden.shape[1], device=hidden.device) * length
    return hidden.flatten(1, 2), mc_token_ids + offsets


def _mc_logits(model, hidden: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The multiple-choice head on the hidden states [B, T, H] at each candidate's ``<eos>`` ``index`` ([B, C])."""
    logits = model.persona_mc_logits(_picked(hidden, index)).float()
    return logits.masked_fill(~valid.bool(), torch.finfo(logits.dtype).min)


def _dual_output(nll_sum, tokens, mc_logits, ranked: tuple, gold: tuple) -> DualOutput:
    """A path's :class:`DualOutput`: ``ranked`` is every candidate's NLL sum and token count, ``gold`` the gold
    tokens' logits and the tokens (or two Nones each)."""
    return DualOutput(
        nll_sum=nll_sum,
        tokens=tokens,
        mc_logits=mc_logits,
        candidate_nll_sum=ranked[0],
        candidate_tokens=ranked[1],
        gold_logits=gold[0],
        gold_targets=gold[1],
    )


def _flat(tensor: torch.Tensor | None, length: int) -> torch.Tensor | None:
    return None if tensor is None else tensor.reshape(-1, length)


def _classic(
    model,
    input_ids,
    attention_mask,
    labels,
    mc_token_ids,
    candidate_valid,
    mc_labels,
    token_type_ids=None,
    candidate_labels=None,
    keep_gold_logits=False,
) -> DualOutput:
    # The mask flattened to [B*C, L]: openai-gpt's own forward flattens the ids and types but not the mask.
    output = model.forward_full(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=_flat(attention_mask, input_ids.shape[-1]),
        mc_token_ids=mc_token_ids,
    )

    def summed(token_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [B, C] NLL sums and counts
        shift_logits, shift_labels = output.logits[..., :-1, :].float(), token_labels[..., 1:]
        nll = F.cross_entropy(
            shift_logits.flatten(0, -2), shift_labels.flatten(), reduction="none", ignore_index=IGNORE_INDEX
        )
        return nll.view(shift_labels.shape).sum(-1), (shift_labels != IGNORE_INDEX).sum(-1)

    nll_sum, tokens = summed(labels)
    mc_logits = output.mc_logits.float().masked_fill(~candidate_valid.bool(), torch.finfo(torch.float32).min)
    ranked = summed(candidate_labels) if candidate_labels is not None else (None, None)
    gold = (None, None)
    if keep_gold_logits:
        rows = torch.arange(len(mc_labels), device=mc_labels.device)
        targets = candidate_labels[rows, mc_labels][:, 1:]
        labelled = targets != IGNORE_INDEX
        gold = output.logits[rows, mc_labels][:, :-1][labelled].float(), targets[labelled]
    return _dual_output(nll_sum.sum(-1), tokens.sum(-1), mc_logits, ranked, gold)


def _full_sequences(
    model,
    input_ids,
    attention_mask,
    labels,
    mc_token_ids,
    candidate_valid,
    mc_labels,
    token_type_ids=None,
    candidate_labels=None,
    keep_gold_logits=False,
) -> DualOutput:
    batch, count, length = input_ids.shape
    hidden = model.persona_backbone(
        inputs_embeds=model.persona_embeddings(input_ids.view(-1, length), _flat(token_type_ids, length)),
        attention_mask=attention_mask.view(-1, length),
        use_cache=False,
    ).last_hidden_state.view(batch, count, length, -1)
    rows = torch.arange(batch, device=input_ids.device)
    nll_sum, tokens = _label_nll(hidden[rows, mc_labels], labels[rows, mc_labels], model.lm_head)
    ranked = (None, None)
    if candidate_labels is not None:  # each candidate sequence is its own group
        ranked = tuple(
            t.view(batch, count)
            for t in _label_nll(hidden.flatten(0, 1), candidate_labels.flatten(0, 1), model.lm_head)
        )
    mc_logits = _mc_logits(model, *_candidate_ends(hidden, mc_token_ids), candidate_valid)
    gold = (None, None)
    if keep_gold_logits:
        gold = _labelled_logits(hidden[rows, mc_labels], candidate_labels[rows, mc_labels], model.lm_head)
    return _dual_output(nll_sum, tokens, mc_logits, ranked, gold)


def _block_causal_mask(
    model, block_ids: torch.Tensor, attention_mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
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
        batch_size=batch,
        q_length=length,
        kv_length=length,
        mask_function=and_masks(causal_mask_function, prefix_or_own_block),
        attention_mask=attention_mask.bool(),
        allow_is_causal_skip=False,
        use_vmap=False,
        dtype=dtype,
        device=block_ids.device,
    )


def _packed(
    model,
    input_ids,
    attention_mask,
    position_ids,
    block_ids,
    labels,
    mc_token_ids,
    candidate_valid,
    mc_labels,
    token_type_ids=None,
    candidate_labels=None,
    keep_gold_logits=False,
) -> DualOutput:
    embeds = model.persona_embeddings(input_ids, token_type_ids)
    mask = _block_causal_mask(model, block_ids, attention_mask, embeds.dtype)
    hidden = model.persona_backbone(
        inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    nll_sum, tokens = _label_nll(hidden, labels, model.lm_head)
    ranked = (None, None)
    if candidate_labels is not None:  # group = (row, candidate): LM logits over the candidate blocks only
        count = mc_token_ids.shape[1]
        groups = torch.arange(len(block_ids), device=block_ids.device)[:, None] * count + (block_ids - 1).clamp(min=0)
        ranked = tuple(
            t.view(-1, count)
            for t in _label_nll(hidden, candidate_labels, model.lm_head, groups, len(block_ids) * count)
        )
    mc_logits = _mc_logits(model, hidden, mc_token_ids, candidate_valid)
    gold = (None, None)
    if keep_gold_logits:  # the gold candidate's block of each row (block 0 is the prefix)
        gold_labels = candidate_labels.masked_fill(block_ids != mc_labels[:, None] + 1, IGNORE_INDEX)
        gold = _labelled_logits(hidden, gold_labels, model.lm_head)
    return _dual_output(nll_sum, tokens, mc_logits, ranked, gold)


class PersonaDualHeads:
    """Mixin for a language model with a multiple-choice head: ``forward(**persona_batch, dual_path=...)``
    gives a :class:`DualOutput`; any other call is the model's own forward.

    A family provides ``persona_mc_logits`` (the head on picked hidden states) and says whether its body
    takes a custom 4D attention mask (``body_takes_block_mask``).
    """

    body_takes_block_mask = False

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        if PersonaFacts.of(config).likelihood_prior:
            self.persona_prior_scale = nn.Parameter(torch.ones(()))

    def packs(self) -> bool:
        """Whether the packed path applies: the body takes a custom 4D mask and its attention (eager or SDPA)
        honours it."""
        return self.body_takes_block_mask and self.config._attn_implementation in ("eager", "sdpa")

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

    def forward(self, *args, dual_path: str | None = None, keep_gold_logits: bool = False, **kwargs):
        """A persona batch with its ``dual_path`` (see :func:`choose_dual_path`) gives a :class:`DualOutput` (with
        ``keep_gold_logits``, the gold tokens' logits too); anything else, the base forward."""
        if dual_path is None:
            return self.forward_full(*args, **kwargs)
        kwargs.pop("gold_copies", None)  # the collator's note for scoring (PersonaTrainer), not an input
        context_free, swapped = _sub_batch(kwargs, CONTEXT_FREE), _sub_batch(kwargs, PERSONA_SWAP)
        output = _PATHS[dual_path](self, **kwargs, keep_gold_logits=keep_gold_logits)
        if context_free:  # a baseline, not trained: the gradient flows through the conversation's likelihood only
            with torch.no_grad():
                output.context_free_nll_sum = _PATHS[dual_path](self, **context_free).candidate_nll_sum
        if swapped:  # trained: the persona-contrastive loss lowers the gold reply's likelihood after other personas
            after_others = _PATHS[dual_path](self, **swapped)
            output.persona_swap_nll_sum, output.persona_swap_tokens = after_others.nll_sum, after_others.tokens
        facts = PersonaFacts.of(self.config)
        if facts.likelihood_prior:
            output.mc_logits = _with_likelihood_prior(
                output, kwargs["candidate_valid"], self.persona_prior_scale, facts.prior_pmi_weight
            )
        return output

    @torch.no_grad()
    def guidance_logits(self, guidance: dict, dual_path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The LM logits (float32, no gradients) before each gold-reply token after its turn's persona and after the
        conversation alone, each [N, vocabulary] turn by turn: this model's reading of the collator's two guidance
        batches (keys starting with :data:`~persona.data.collator.WITH_PERSONA` and
        :data:`~persona.data.collator.PERSONA_FREE`), as the guidance teacher reads them."""
        guidance = dict(guidance)
        return tuple(
            _PATHS[dual_path](self, **_sub_batch(guidance, key), keep_gold_logits=True).gold_logits
            for key in (WITH_PERSONA, PERSONA_FREE)
        )


def _sub_batch(inputs: dict, prefix: str) -> dict:
    """The collator's sub-batch whose keys start with ``prefix``, taken out of ``inputs``, the prefix dropped."""
    return {name.removeprefix(prefix): inputs.pop(name) for name in list(inputs) if name.startswith(prefix)}


def _with_likelihood_prior(
    output: DualOutput, valid: torch.Tensor, scale: torch.Tensor, pmi_weight: float = 0.0
) -> torch.Tensor:
    """The multiple-choice logits plus ``scale`` times each valid candidate's mean token log-likelihood (its reply and
    its end token) less ``pmi_weight`` times its mean token log-likelihood after an empty conversation (its pointwise
    mutual information with the conversation per token, :meth:`DualOutput.pmi`), so that the score starts from what
    the language model already knows."""
    if output.candidate_nll_sum is None:
        raise ValueError("the likelihood prior scores every candidate: the batch needs its candidate_labels")
    prior = output.pmi(pmi_weight) if pmi_weight else output.mean_log_likelihood()
    return output.mc_logits + scale * prior.masked_fill(~valid.bool(), 0.0)


HEAD_MODULE = "multiple_choice_head"
PRIOR_SCALE = "persona_prior_scale"
HEAD_PARAMETERS = (HEAD_MODULE, PRIOR_SCALE)  # persona's additions to a language model, by name


def is_head_parameter(name: str) -> bool:
    """Whether a parameter (by its name in a state dict or ``named_parameters``, wrapped or not) is one of persona's
    additions, the multiple-choice head and the likelihood prior's scale, rather than the language model's."""
    return any(part in name.split(".") for part in HEAD_PARAMETERS)


def init_likelihood_prior(model) -> None:
    """Start the likelihood prior: scale 1 and a multiple-choice head of zeros, so that the model ranks candidates
    exactly as its language model does (the head then learns what the likelihood misses)."""
    with torch.no_grad():
        model.persona_prior_scale.fill_(1.0)
        model.multiple_choice_head.summary.weight.zero_()
        model.multiple_choice_head.summary.bias.zero_()


_PATHS = {DualPath.PACKED: _packed, DualPath.FULL_SEQUENCES: _full_sequences, DualPath.CLASSIC: _classic}


def choose_dual_path(model, forward_mode: str) -> DualPath:
    """The path of a persona batch through ``model``, from the recipe's ``forward_mode``: classic as asked, else
    packed where the model's attention takes the block mask, full sequences where not."""
    if forward_mode == DualPath.CLASSIC:
        return DualPath.CLASSIC
    return DualPath.PACKED if model.packs() else DualPath.FULL_SEQUENCES


def collator_for(
    path: DualPath,
    ids: SpecialIds,
    *,
    token_types: bool = True,
    wrap_candidates: bool = True,
    empty_prefix: tuple[int, ...] | None = None,
) -> PersonaCollator:
    """The collator that builds the batches of ``path`` (packed rows for the packed path, [batch, candidates, length]
    for the others): the one place a path and its batch layout are paired. ``empty_prefix``: see
    :class:`~persona.data.collator.PersonaCollator`."""
    return PersonaCollator(
        ids,
        packed=path is DualPath.PACKED,
        token_types=token_types,
        wrap_candidates=wrap_candidates,
        empty_prefix=empty_prefix,
    )


class GPTDualHeads(PersonaDualHeads):
    """GPT2DoubleHeadsModel / OpenAIGPTDoubleHeadsModel: their own token types and multiple-choice head."""

    def persona_mc_logits(self, picked: torch.Tensor) -> torch.Tensor:
        """GPT's SequenceSummary head on the picked hidden states [B, C, H] -> [B, C]."""
        return self.multiple_choice_head(
            picked[:, :, None], torch.zeros(picked.shape[:2], dtype=torch.long, device=picked.device)
        ).squeeze(-1)

    def forward_full(self, *args, logits_to_keep: int = 0, **kwargs):
        """The base double-heads model's own forward (all logits); with ``logits_to_keep`` k, the body and the LM
        logits of the last k positions alone (what decoding reads), as transformers' causal LMs give."""
        if not logits_to_keep:
            return super(PersonaDualHeads, self).forward(*args, **kwargs)
        body = self.transformer(*args, **kwargs)
        logits = self.lm_head(body.last_hidden_state[:, -logits_to_keep:])
        return CausalLMOutputWithPast(logits=logits, cache=getattr(body, "cache", None))  # openai-gpt keeps none


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

    body_takes_block_mask = True

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.multiple_choice_head = MultipleChoiceHead(
            config.hidden_size, getattr(config, "summary_first_dropout", 0.1)
        )

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
            inputs_embeds=self.persona_embeddings(input_ids.view(-1, length), _flat(token_type_ids, length)),
            attention_mask=mask.view(-1, length),
            **kwargs,
        ).last_hidden_state
        hidden = hidden.view(batch, count, length, -1)
        return FullOutput(
            logits=self.lm_head(hidden),
            mc_logits=self.persona_mc_logits(_picked(*_candidate_ends(hidden, mc_token_ids))),
        )


def _with_extra_arguments(signature: inspect.Signature, names: tuple[str, ...]) -> inspect.Signature:
    """The base forward's signature plus keyword arguments ``names`` (``generate`` checks its arguments against it)."""
    present = set(signature.parameters)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names if name not in present
    ]
    tail = [p for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    return signature.replace(parameters=[*params, *extra, *tail])


@functools.cache
def persona_class(base: type) -> type:
    """The persona double-heads class of a transformers model class (GPT's double-heads, or any causal LM).

    Named like its base so that ``save_pretrained`` records the plain transformers architecture: the
    saved model loads with plain transformers, no persona code needed (a causal LM drops the head).
    """
    family = GPTDualHeads if base in (GPT2DoubleHeadsModel, OpenAIGPTDoubleHeadsModel) else CausalDualHeads
    attributes = {"__module__": __name__, "body_takes_block_mask": True}
    bases = (family, base)
    if base is OpenAIGPTDoubleHeadsModel:
        # Its attention takes no custom 4D mask: it runs full sequences (LM logits still only where labels are).
        # Nor can it generate in transformers 5: it gets the generation of its language-model sibling.
        attributes.update(
            body_takes_block_mask=False,
            prepare_inputs_for_generation=OpenAIGPTLMHeadModel.prepare_inputs_for_generation,
        )
        bases = (family, base, GenerationMixin)
    cls = type(base.__name__, bases, attributes)

    def forward(self, *args, dual_path: str | None = None, **kwargs):
        return PersonaDualHeads.forward(self, *args, dual_path=dual_path, **kwargs)

    forward.__signature__ = _with_extra_arguments(
        inspect.signature(base.forward), ("dual_path", "token_type_ids", "logits_to_keep")
    )
    forward.__doc__ = PersonaDualHeads.forward.__doc__
    cls.forward = forward
    return cls


DOUBLE_HEADS = {"gpt2": GPT2DoubleHeadsModel, "openai-gpt": OpenAIGPTDoubleHeadsModel}


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
