"""A persona-train run: load the model, prepare the corpus, train with the dual loss, evaluate and save.

Writes to ``output_dir``: the weights (safetensors) and the tokenizer with its chat template, first, as soon as
training ends (a failure after that leaves a model that loads), then ``persona_recipe.yaml`` (the recipe as run),
``train_results.json``, ``eval_results.json``, ``trainer_state.json``, ``loss_curves.png`` and the model card
``README.md``. With ``push_to_hub: true`` (and ``hub_model_id``) the Trainer uploads that folder at the end.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from transformers import IntervalStrategy, set_seed

from persona.configs import DataArguments, ModelArguments, PersonaTrainingArguments
from persona.data import prepare_corpus
from persona.errors import ConfigError, Interrupted
from persona.model.loading import load_for_training
from persona.model.lora import merged, with_lora
from persona.training.allocator import hint_lean_allocator
from persona.training.checkpoints import resolve_checkpoint
from persona.training.cpu_precision import hint_cpu_precision
from persona.training.plots import plot_losses
from persona.training.preemption import StopOnSignal
from persona.training.publishing import ready_to_publish
from persona.training.time_budget import TimeBudget, time_budget_of
from persona.training.trainer import PersonaTrainer

logger = logging.getLogger("persona")


def check_engine() -> None:
    """A clear error where the accelerate config asks for FSDP or DeepSpeed on a machine without an accelerator.

    accelerate (1.15) shards with FSDP only on accelerators: an FSDP 1 config on CPU ranks fails inside the Trainer
    with a traceback, an FSDP 2 config silently trains data-parallel with a whole model on each rank.
    """
    engines = [
        name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true"
    ]
    if engines and not torch.accelerator.is_available():
        raise ConfigError(
            f"the accelerate config asks for {engines[0]}, which accelerate runs on GPUs (or other accelerators) "
            f"only, "
            "and this machine has none",
            where="accelerate launch --config_file",
            fix="on CPU ranks launch with accelerate_configs/multi_cpu.yaml (data-parallel); use the FSDP and "
            "DeepSpeed configs on GPUs.",
        )


def _trainer(
    model_args: ModelArguments, data_args: DataArguments, training_args: PersonaTrainingArguments
) -> tuple[PersonaTrainer, dict]:
    """The trainer of the run, with its model, tokenizer and prepared splits; and the corpus statistics."""
    loaded = load_for_training(model_args, training_args.use_token_types, data_args.input_layout)
    training_args.use_token_types = loaded.token_types
    ready_to_publish(loaded)
    if model_args.use_peft:
        loaded = replace(loaded, model=with_lora(loaded.model, model_args, loaded.layout))
    with training_args.main_process_first(desc="dataset preparation"):
        corpus = prepare_corpus(
            data_args,
            loaded.layout,
            max_positions=loaded.max_positions,
            stats_batch_size=training_args.per_device_train_batch_size,
        )
    for role, stats in corpus.stats["splits"].items():
        logger.info("%s split: %s", role, stats)
    evaluating = "eval" in corpus.features
    if not evaluating and training_args.eval_strategy != IntervalStrategy.NO:
        logger.warning("eval_strategy %s set to no: there is no evaluation split", training_args.eval_strategy.value)
        training_args.eval_strategy = IntervalStrategy.NO
    trainer = PersonaTrainer(
        loaded,
        training_args,
        train_dataset=corpus.features["train"],
        eval_dataset=corpus.features["eval"] if evaluating else None,
        guidance_teacher=data_args.guidance_distillation,
    )
    return trainer, corpus.stats


def _train(trainer: PersonaTrainer, checkpoint: str | None):
    """``trainer.train``, stopping cleanly with a checkpoint on SIGTERM or SIGINT (:class:`Interrupted`, which says
    how to resume)."""
    stop = StopOnSignal()
    trainer.add_callback(stop)
    if trainer.args.max_train_seconds is not None:
        trainer.add_callback(TimeBudget(trainer.args.max_train_seconds))
    with stop:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    if stop.stopped_at is None:
        return result
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    folder = Path(trainer.args.output_dir) / f"checkpoint-{stop.stopped_at}"
    raise Interrupted(
        stop.received or signal.SIGTERM,
        f"interrupted at step {stop.stopped_at} of {trainer.state.max_steps}, saved in {folder}; resume with the same "
        "command and --resume_from_checkpoint last",
    )


def _train_and_save(trainer: PersonaTrainer, checkpoint: str | None, stats: dict) -> None:
    """Train, save the weights first, then the metrics and state; evaluate when there is an evaluation split."""
    args = trainer.args
    result = _train(trainer, checkpoint)
    trainer.model = merged(trainer.model)  # LoRA adapters merged: what is evaluated and saved is a plain model
    trainer.save_model()  # weights and tokenizer first: whatever fails after this, the trained model loads
    budget = time_budget_of(trainer.callback_handler.callbacks)
    train_metrics = {
        **result.metrics,
        **({"last_learning_rate": budget.last_learning_rate} if budget is not None else {}),
        "world_size": args.world_size,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "train_examples": len(trainer.train_dataset),
    }
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", {**train_metrics, "skipped": stats["splits"]["train"]["skipped"]})
    trainer.save_state()
    if trainer.eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", {**eval_metrics, "skipped": stats["splits"]["eval"]["skipped"]})


def fine_tune(
    model_args: ModelArguments, data_args: DataArguments, training_args: PersonaTrainingArguments, recipe: dict
) -> Path:
    """The whole run of ``persona-train`` (``recipe``: the recipe as run, saved beside the model); returns
    ``output_dir``."""
    check_engine()
    set_seed(training_args.seed)
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    trainer, stats = _trainer(model_args, data_args, training_args)
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        hint_lean_allocator(on_cpu=training_args.device.type == "cpu")
        hint_cpu_precision(on_cpu=training_args.device.type == "cpu", bf16=training_args.bf16)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "persona_recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    _train_and_save(trainer, checkpoint, stats)
    if trainer.is_world_process_zero():
        plot_losses(trainer.state.log_history, output_dir / "loss_curves.png")
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="persona-train: end of training")  # writes the card, uploads the folder
        logger.info("Pushed %s to the Hub as %s", output_dir, trainer.hub_model_id)
    else:
        trainer.create_model_card()
    logger.info("Saved the model, its tokenizer, metrics, model card and loss curves to %s", output_dir)
    # Every rank waits for the writer, then the process group is torn down before the interpreter exits: left to
    # the exit, gloo's worker threads can be destroyed while still joinable (std::terminate on a rank).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return output_dir
