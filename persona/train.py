"""``persona-train RECIPE.yaml [--field value ...]``: fine-tune a persona chatbot with the dual loss.

Also runs under ``accelerate launch [--config_file accelerate_configs/X.yaml] -m persona.train RECIPE.yaml``.
Writes to ``output_dir``: the weights (safetensors) and the tokenizer with its chat template, first, as soon
as training ends (a failure after that leaves a model that loads), then ``persona_recipe.yaml`` (the recipe
as run), ``train_results.json``, ``eval_results.json``, ``trainer_state.json``, ``loss_curves.png`` and the
model card ``README.md``. With ``push_to_hub: true``
(and ``hub_model_id``) the Trainer uploads that folder at the end; the token comes from ``HF_TOKEN`` or
``huggingface-cli login`` and is never written anywhere.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
import yaml
from transformers import IntervalStrategy, set_seed
from transformers.trainer import TRAINER_STATE_NAME

from persona.chat_template import add_chat_template
from persona.cli import cli_entry, parse_recipe, setup_logging
from persona.data import prepare_corpus
from persona.errors import ConfigError
from persona.generation import DecodingArguments
from persona.loading import load_for_training, max_positions, uses_token_types
from persona.lora import merged, with_lora
from persona.plots import plot_losses
from persona.trainer import PersonaTrainer

logger = logging.getLogger("persona")


def ready_to_publish(model, tokenizer, token_types: bool) -> None:
    """What a trained model carries for plain transformers and persona alike: whether it takes token types (eval
    and chat follow it), the chat template, and the reference's decoding (sampling, temperature 0.7, top-p 0.9,
    the other special tokens suppressed) as its generation config."""
    model.config.persona_token_types = token_types
    add_chat_template(tokenizer)
    model.generation_config = DecodingArguments().generation_config(tokenizer)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` that was written to the end.

    The Trainer writes ``trainer_state.json`` last; a run killed while saving leaves a checkpoint
    without it, which is skipped (with a warning) rather than resumed from.
    """
    folder = Path(output_dir)
    steps = sorted((int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit()) if folder.is_dir() else []
    for _, checkpoint in reversed(steps):
        if (checkpoint / TRAINER_STATE_NAME).is_file():
            return str(checkpoint)
        logger.warning("Skipping %s: written only in part (no %s)", checkpoint, TRAINER_STATE_NAME)
    return None


def check_engine() -> None:
    """A clear error where the accelerate config asks for FSDP or DeepSpeed on a machine without an accelerator.

    accelerate (1.15) shards with FSDP only on accelerators: an FSDP 1 config on CPU ranks fails inside the Trainer
    with a traceback, an FSDP 2 config silently trains data-parallel with a whole model on each rank.
    """
    engines = [name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true"]
    if engines and not torch.accelerator.is_available():
        raise ConfigError(
            f"the accelerate config asks for {engines[0]}, which accelerate runs on GPUs (or other accelerators) only, and this machine has none",
            where="accelerate launch --config_file",
            fix="on CPU ranks launch with accelerate_configs/multi_cpu.yaml (data-parallel); use the FSDP and DeepSpeed configs on GPUs.",
        )


def resolve_checkpoint(value: str | None, output_dir: str) -> str | None:
    """``resume_from_checkpoint``: a folder, or ``true``/``last`` for the newest checkpoint in ``output_dir``."""
    if value is None or value.lower() in ("false", "none", ""):
        return None
    if value.lower() in ("true", "last"):
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise ConfigError("no complete checkpoint to resume from", where=output_dir, fix="train once with save_strategy set, or drop resume_from_checkpoint.")
        return last
    if not os.path.isdir(value):
        raise ConfigError("checkpoint folder not found", where=value, fix="pass a checkpoint-N folder of output_dir, or 'last'.")
    return value


@cli_entry
def main(argv: list[str]) -> int:
    """Parse the recipe, prepare the data, train, evaluate and save."""
    (model_args, data_args, training_args), recipe = parse_recipe(argv)
    setup_logging(training_args.should_log, training_args)
    check_engine()
    set_seed(training_args.seed)
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    model, tokenizer = load_for_training(model_args)
    training_args.use_token_types = uses_token_types(model.config, training_args.use_token_types)
    ready_to_publish(model, tokenizer, training_args.use_token_types)
    if model_args.use_peft:
        model = with_lora(model, model_args, tokenizer)
    with training_args.main_process_first(desc="dataset preparation"):
        corpus = prepare_corpus(
            data_args, tokenizer, max_length=max_positions(model.config), stats_batch_size=training_args.per_device_train_batch_size
        )
    for role, stats in corpus.stats["splits"].items():
        logger.info("%s split: %s", role, stats)
    evaluating = "eval" in corpus.features
    if not evaluating and training_args.eval_strategy != IntervalStrategy.NO:
        logger.warning("eval_strategy %s set to no: there is no evaluation split", training_args.eval_strategy.value)
        training_args.eval_strategy = IntervalStrategy.NO
    trainer = PersonaTrainer(
        model=model,
        args=training_args,
        train_dataset=corpus.features["train"],
        eval_dataset=corpus.features["eval"] if evaluating else None,
        processing_class=tokenizer,
    )
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "persona_recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.model = merged(trainer.model)  # LoRA adapters merged: what is evaluated and saved is a plain model
    trainer.save_model()  # weights and tokenizer first: whatever fails after this, the trained model loads
    train_metrics = {
        **result.metrics,
        "world_size": training_args.world_size,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "train_examples": len(corpus.features["train"]),
    }
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", {**train_metrics, "skipped": corpus.stats["splits"]["train"]["skipped"]})
    trainer.save_state()
    if evaluating:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", {**eval_metrics, "skipped": corpus.stats["splits"]["eval"]["skipped"]})
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
