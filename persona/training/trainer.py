"""``PersonaTrainer``: the Hugging Face Trainer with TransferTransfo's dual loss and ConvAI2's metrics.

loss = ``lm_coef`` × LM loss (mean NLL of the gold reply's tokens) + ``mc_coef`` × multiple-choice loss (cross-entropy
of picking the gold reply among the candidates), + ``persona_coef`` × the persona-contrastive loss where the corpus was
built with ``persona_contrast`` (:func:`persona_contrast_loss`), + ``guidance_coef`` × the guidance-distillation loss
where it was built with ``guidance_distillation`` (:func:`guidance_distillation_loss`; with ``guidance_min_gain``, only
at the gold tokens the persona makes likelier by that much, :func:`persona_token_gain`). Each part is logged
(``lm_loss``, ``mc_loss``, ``persona_loss``, ``guidance_loss``; ``guided_token_share``, the share of gold tokens the
gate kept). Evaluation reports ``eval_loss``, ``eval_lm_loss``, ``eval_mc_loss``, ``eval_perplexity`` (exp of the gold
tokens' mean NLL over the whole split, so the batch size does not change it), ``eval_hits@1`` (the multiple-choice
head's ranking), ``eval_lm_hits@1`` (the candidates ranked by their mean token log-likelihood), with a PMI weight
``eval_pmi_hits@1`` (ranked by their pointwise mutual information with the conversation) and ``eval_num_candidates``.
Everything else is the Trainer's own.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction, Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from persona.data.collator import CONTEXT_FREE, PERSONA_FREE, SWAP_OWNER, WITH_PERSONA
from persona.metrics import gold_ranks, hits_from_ranks
from persona.model.dual_heads import DualOutput, choose_dual_path, collator_for, is_head_parameter
from persona.model.loading import LoadedModel
from persona.model.persona_guidance import guided_scores
from persona.training.model_card import write_model_card
from persona.training.time_budget import schedule_progress

logger = logging.getLogger("persona")


def dual_loss(
    output: DualOutput, mc_labels: torch.Tensor, lm_coef: float, mc_coef: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weighted loss of one batch and its two parts (LM: mean over the batch's gold tokens; MC: mean over
    turns)."""
    lm_loss = output.nll_sum.sum() / output.tokens.sum().clamp(min=1)
    mc_loss = F.cross_entropy(output.mc_logits, mc_labels)
    return lm_coef * lm_loss + mc_coef * mc_loss, lm_loss, mc_loss


def persona_contrast_loss(own: torch.Tensor, swapped: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """The persona-contrastive loss: over the turns that have other personas, the mean cross-entropy of picking the
    turn's own persona by the gold reply's mean token log-likelihood after it (``own`` [B]) among it and after each
    other persona (``swapped`` [S], row ``s`` a swap of turn ``owner[s]``). It rises the reply's likelihood after its
    own persona and lowers it after the others: the model learns to say what its persona says, which neither the LM
    loss (a reply that fits the conversation) nor the multiple-choice loss (other conversations' replies) asks."""
    counts = torch.bincount(owner, minlength=len(own))
    starts = torch.cumsum(counts, 0) - counts
    slots = torch.arange(len(owner), device=owner.device) - starts[owner] + 1
    scores = own.new_full((len(own), int(counts.max()) + 1), -torch.inf)
    scores[:, 0] = own
    scores[owner, slots] = swapped
    contrasted = counts > 0
    return F.cross_entropy(scores[contrasted], torch.zeros_like(owner[: int(contrasted.sum())]))


def guidance_distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, teacher_alone: torch.Tensor, weight: float
) -> torch.Tensor:
    """The guidance-distillation loss: the mean, over the gold replies' tokens, of the Kullback-Leibler divergence
    from the teacher's guided distribution to the student's. ``student`` and ``teacher`` [N, vocabulary]: their logits
    before each gold token after the persona and the conversation; ``teacher_alone``: the teacher's after the
    conversation alone. The target is persona guidance by ``weight`` of the teacher's logits
    (:func:`~persona.model.persona_guidance.guided_scores`, as persona_weight decodes): the student learns to give,
    without guidance, what guidance makes of the teacher, so that greedy replies in persona-serve or behind an engine
    use the persona as guided ones do. The teacher is fixed (the model as training started): a target taken from the
    student itself moves away as fast as the student follows it."""
    if not len(student):
        return student.sum() * 0.0
    with torch.no_grad():
        target = guided_scores(teacher, teacher_alone, weight).log_softmax(-1)
    return F.kl_div(student.log_softmax(-1), target, log_target=True, reduction="batchmean")


def persona_token_gain(teacher: torch.Tensor, teacher_alone: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What the persona adds to each gold token's log-likelihood for the teacher, in nats, [N]: log p(t | persona,
    history) - log p(t | history) of the gold token ``t`` (``targets`` [N]) from the teacher's logits after the
    persona and the conversation (``teacher``) and after the conversation alone (``teacher_alone``), [N,
    vocabulary]. High where the gold reply says what its persona says, near 0 where the persona has no part in it."""
    picked = targets[:, None]
    return (teacher.log_softmax(-1).gather(1, picked) - teacher_alone.log_softmax(-1).gather(1, picked))[:, 0]


def _persona_loss(output: DualOutput, mc_labels: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """:func:`persona_contrast_loss` of a batch's forward: the gold reply's likelihood after its own persona (among
    the candidates' scores) and after the others (the swapped-persona batch)."""
    own = output.mean_log_likelihood().gather(1, mc_labels[:, None])[:, 0]
    swapped = -output.persona_swap_nll_sum / output.persona_swap_tokens.clamp(min=1)
    return persona_contrast_loss(own, swapped, owner)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` as it is now, in evaluation mode and without gradients (the guidance teacher)."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def _tied_to_gold(scores: torch.Tensor, gold_copies: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """``scores`` [B, C] with every copy of the gold reply given exactly the gold's score (a tie, which counts as a
    miss)."""
    return torch.where(gold_copies, scores.gather(1, gold[:, None]), scores)


def _gold_rank(
    scores: torch.Tensor, mc_labels: torch.Tensor, valid: torch.Tensor, gold_copies: torch.Tensor
) -> torch.Tensor:
    """The gold reply's rank by ``scores`` [B, C] among the valid candidates, its copies tied with it."""
    return gold_ranks(_tied_to_gold(scores, gold_copies, mc_labels).masked_fill(~valid, -torch.inf), mc_labels)


def turn_scores(
    output: DualOutput,
    mc_labels: torch.Tensor,
    candidate_valid: torch.Tensor,
    gold_copies: torch.Tensor | None = None,
    pmi_weight: float | None = None,
) -> torch.Tensor:
    """Per turn: the gold reply's rank among the candidates by the multiple-choice head (0 = first), its NLL sum and
    token count, the MC loss, the number of candidates, its rank by likelihood (the candidates' mean token
    log-likelihood, their ``<eos>`` included) and, with a ``pmi_weight``, its rank by pointwise mutual information
    (:meth:`DualOutput.pmi`; NaN without), as a [B, 7] float64 tensor that the Trainer gathers. ``gold_copies`` (the
    collator's) marks the candidates identical to the gold reply, which are scored as it is (a tie)."""
    valid = candidate_valid.bool()
    gold_copies = torch.zeros_like(valid) if gold_copies is None else gold_copies
    rank = _gold_rank(output.mc_logits, mc_labels, valid, gold_copies)
    lm_rank = _gold_rank(output.mean_log_likelihood(), mc_labels, valid, gold_copies)
    pmi_rank = (
        torch.full_like(lm_rank, torch.nan, dtype=torch.double)
        if pmi_weight is None
        else _gold_rank(output.pmi(pmi_weight), mc_labels, valid, gold_copies)
    )
    mc_loss = F.cross_entropy(output.mc_logits, mc_labels, reduction="none")
    columns = (rank, output.nll_sum, output.tokens, mc_loss, candidate_valid.sum(-1), lm_rank, pmi_rank)
    return torch.stack([c.double() for c in columns], dim=-1)


def metrics_from_scores(
    scores: np.ndarray, lm_coef: float, mc_coef: float, ks: tuple[int, ...] = (1,)
) -> dict[str, float]:
    """Split-level metrics from the rows of :func:`turn_scores` (``pmi_hits@k`` where the turns were ranked by
    PMI)."""
    rank, nll, tokens, mc_loss, counts, lm_rank, pmi_rank = scores.T
    lm_loss = float(nll.sum() / max(tokens.sum(), 1))
    metrics = {
        "loss": lm_coef * lm_loss + mc_coef * float(mc_loss.mean()),
        "lm_loss": lm_loss,
        "mc_loss": float(mc_loss.mean()),
        "perplexity": math.exp(lm_loss),
        "num_candidates": float(counts.mean()),
        "num_turns": int(len(rank)),
        "num_reply_tokens": int(tokens.sum()),
    }
    ranked_by_pmi = len(pmi_rank) > 0 and not np.isnan(pmi_rank).any()
    return {
        **metrics,
        **hits_from_ranks(rank, ks),
        **{f"lm_{name}": value for name, value in hits_from_ranks(lm_rank, ks).items()},
        **({f"pmi_{name}": value for name, value in hits_from_ranks(pmi_rank, ks).items()} if ranked_by_pmi else {}),
    }


class PersonaTrainer(Trainer):
    """A Trainer whose loss is TransferTransfo's dual loss, for a :class:`~persona.model.loading.LoadedModel`; its
    args are a ``PersonaTrainingArguments``.

    The batch's path through the model (``dual_path``: packed, full sequences or classic) and its collator are
    decided here, once, from ``args.forward_mode``, the model and its facts (token types; in the chat-template
    layout the candidates come as whole blocks, see :mod:`persona.data.chat_layout`). ``pmi_weight`` also ranks the
    evaluated turns by PMI (``pmi_hits@k``); by default, a model whose likelihood prior is PMI is ranked with its
    prior's weight. ``guidance_teacher`` keeps a frozen copy of the model, the teacher of the guidance-distillation
    loss, for a corpus built with ``guidance_distillation``: the model as it is given (before any update, or any
    checkpoint resumed into it), or, with ``args.guidance_start``, as it is at the first update past that share of
    the schedule (:func:`~persona.training.time_budget.schedule_progress`); the loss starts there.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        args,
        *,
        pmi_weight: float | None = None,
        guidance_teacher: bool = False,
        compute_metrics=None,
        **kwargs,
    ):
        self.dual_path = choose_dual_path(loaded.model, args.forward_mode)
        facts = loaded.facts
        self.scores_every_candidate = facts.likelihood_prior
        self.prior_needs_context_free = facts.prior_needs_context_free
        default_weight = facts.prior_pmi_weight if self.prior_needs_context_free else None
        self.pmi_weight = pmi_weight if pmi_weight is not None else default_weight
        data_collator = collator_for(
            self.dual_path,
            loaded.ids,
            token_types=loaded.token_types,
            wrap_candidates=loaded.layout.wraps_candidates,
            empty_prefix=loaded.layout.empty_prefix() if self.pmi_weight is not None else None,
        )
        super().__init__(
            model=loaded.model,
            args=args,
            processing_class=loaded.tokenizer,
            data_collator=data_collator,
            compute_metrics=compute_metrics or self._compute_metrics,
            **kwargs,
        )
        # compute_loss returns the batch's own mean loss, not a sum over the tokens of the whole accumulated
        # step: the Trainer must neither pass num_items_in_batch (model_accepts_loss_kwargs) nor skip its
        # division by gradient_accumulation_steps (loss_is_scaled_for_ga), as the reference divided its loss.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._loss_parts: dict[str, list[float]] = defaultdict(list)
        self.distills_guidance = guidance_teacher
        self.guidance_teacher = _frozen_copy(self.model) if guidance_teacher and not args.guidance_start else None

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the multiple-choice head (and the likelihood prior's scale) in groups of their
        own at ``args.head_learning_rate`` when it is set; the scheduler then decays each group from its own peak."""
        optimizer = super().create_optimizer(model)
        if self.args.head_learning_rate is None:
            return optimizer
        head = {id(p) for name, p in self.model.named_parameters() if is_head_parameter(name)}
        groups = []
        for group in optimizer.param_groups:
            groups.append({**group, "params": [p for p in group["params"] if id(p) not in head]})
            head_params = [p for p in group["params"] if id(p) in head]
            groups.append({**group, "params": head_params, "lr": self.args.head_learning_rate})
        optimizer.param_groups = [group for group in groups if group["params"]]
        return optimizer

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save as the Trainer does, but the training arguments as JSON instead of a pickled ``training_args.bin``."""
        super()._save(output_dir, state_dict)
        if not self.args.should_save:  # every process calls _save; only the writer writes (the folder may not exist)
            return
        folder = Path(output_dir or self.args.output_dir)
        (folder / TRAINING_ARGS_NAME).unlink(missing_ok=True)
        (folder / "training_args.json").write_text(self.args.to_json_string())

    def create_model_card(self, **kwargs) -> None:
        """Write persona's model card (README.md) into ``output_dir``; ``Trainer.push_to_hub`` uploads it."""
        if self.is_world_process_zero():
            write_model_card(self.args.output_dir, hub_model_id=self.hub_model_id or self.args.hub_model_id)

    def _forward(self, model, inputs, rank_candidates: bool = False, keep_gold_logits: bool = False) -> DualOutput:
        """The dual forward; ``rank_candidates`` (and, always, a model with the likelihood prior, a batch with
        swapped personas or the gold tokens' logits kept) also scores every candidate's likelihood (LM logits over
        all of them), and after an empty conversation too where PMI ranks."""
        swapped = SWAP_OWNER in inputs
        inputs = {name: value for name, value in inputs.items() if name != SWAP_OWNER}
        if not (rank_candidates or self.scores_every_candidate or swapped or keep_gold_logits):
            inputs = {name: value for name, value in inputs.items() if name != "candidate_labels"}
        if not (rank_candidates or self.prior_needs_context_free):
            inputs = {name: value for name, value in inputs.items() if not name.startswith(CONTEXT_FREE)}
        return model(**inputs, dual_path=self.dual_path, keep_gold_logits=keep_gold_logits)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        guidance = {name: value for name, value in inputs.items() if name.startswith((PERSONA_FREE, WITH_PERSONA))}
        inputs = {name: value for name, value in inputs.items() if name not in guidance}
        guidance = guidance if guidance and model.training and self._guidance_started() else {}
        output = self._forward(model, inputs, keep_gold_logits=bool(guidance))
        loss, lm_loss, mc_loss = dual_loss(output, inputs["mc_labels"], self.args.lm_coef, self.args.mc_coef)
        parts = {"lm_loss": lm_loss, "mc_loss": mc_loss}
        if SWAP_OWNER in inputs:
            parts["persona_loss"] = _persona_loss(output, inputs["mc_labels"], inputs[SWAP_OWNER])
            loss = loss + self.args.persona_coef * parts["persona_loss"]
        if guidance:
            parts.update(self._guidance_loss(output, guidance))
            loss = loss + self.args.guidance_coef * parts["guidance_loss"]
        if model.training:
            for name, value in parts.items():
                self._loss_parts[name].append(value.detach())
        return (loss, output) if return_outputs else loss

    def _guidance_started(self) -> bool:
        """Whether the guidance-distillation loss applies to this update: from the first with ``guidance_start`` 0,
        else from the first past that share of the schedule, the teacher frozen then."""
        if not self.distills_guidance:
            raise ValueError("the batch has persona-free prefixes but the trainer keeps no guidance_teacher")
        progress = schedule_progress(self.state, self.callback_handler.callbacks)
        if self.guidance_teacher is None and progress >= self.args.guidance_start:
            self.guidance_teacher = _frozen_copy(self.model)
            logger.info(
                "Guidance distillation starts at update %d, %.0f%% of the schedule: the teacher is the model now",
                self.state.global_step + 1,
                100 * progress,
            )
        return self.guidance_teacher is not None

    def _guidance_loss(self, student: DualOutput, guidance: dict) -> dict[str, torch.Tensor]:
        """``guidance_loss``, :func:`guidance_distillation_loss` of the student's forward, the teacher reading each
        turn's gold reply alone after its persona and after the conversation alone (the collator's two guidance
        batches), not the other candidates; with ``guidance_min_gain``, over the gold tokens whose
        :func:`persona_token_gain` reaches it, and their share of the gold tokens, ``guided_token_share``."""
        own, alone = self.guidance_teacher.guidance_logits(guidance, self.dual_path)
        student_logits, min_gain = student.gold_logits, self.args.guidance_min_gain
        if min_gain is None:
            return {"guidance_loss": guidance_distillation_loss(student_logits, own, alone, self.args.guidance_weight)}
        kept = persona_token_gain(own, alone, student.gold_targets) >= min_gain
        loss = guidance_distillation_loss(student_logits[kept], own[kept], alone[kept], self.args.guidance_weight)
        return {"guidance_loss": loss, "guided_token_share": kept.float().mean()}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of each loss part since the last log (averaged over processes) to training logs, and of
        ``guided_token_share`` where ``guidance_min_gain`` gates the guidance loss."""
        if "loss" in logs and self._loss_parts:
            for name, values in self._loss_parts.items():
                mean = torch.stack(values).mean()
                logs[name] = round(self.accelerator.reduce(mean, reduction="mean").item(), 4)
            self._loss_parts.clear()
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            output = self._forward(model, inputs, rank_candidates=True)
        scores = turn_scores(
            output, inputs["mc_labels"], inputs["candidate_valid"], inputs["gold_copies"], self.pmi_weight
        )
        return None, scores, inputs["mc_labels"]

    def _compute_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        return metrics_from_scores(np.asarray(prediction.predictions), self.args.lm_coef, self.args.mc_coef)
