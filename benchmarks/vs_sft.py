"""The peer a user would train instead of persona: TRL's SFTTrainer on the same model, data and training budget.

    pip install -e ".[bench]"   # TRL, for this benchmark only
    python benchmarks/vs_sft.py --output_dir DIR [--recipe recipes/smollm2-135m-offline/train.yaml]
        [--max_train_seconds 900] [--per_device_train_batch_size 2] [--learning_rate 1e-4] [--max_steps N]

The training dialogs are the recipe's own (persona's reader and held-out split: the same conversations, the same
skipped records, both bot sides), each turned into one conversation in the model's chat template: the persona as the
system message, the partner as the user, ``__ SILENCE __`` as the user's first message when the bot opens, and every
assistant reply labelled (SFT's assistant-only loss, ``assistant_only_loss``; SmolLM2's template is given
``{% generation %}`` markers for training and saved as it was). The model is the recipe's (its GGUF de-quantized by
transformers), trained with the recipe's seed, gradient checkpointing and learning-rate schedule on persona's own time
budget (:class:`~persona.training.time_budget.TimeBudget`: the schedule, its warmup a share of the budget, ends at
zero when ``--max_train_seconds`` of training end, whatever an update costs), with a shape of its own: conversations
per update (``--per_device_train_batch_size``; SFT's examples are whole conversations, not turns) and peak learning
rate, so that it can be given its best at the budget. ``--max_train_seconds 0`` trains ``--max_steps`` updates on a
schedule of updates instead. DIR then holds a plain model that ``persona-eval`` scores as a prompted model, and
``train_results.json`` (``train_runtime``, updates, conversations seen, ``last_learning_rate``).
``benchmarks/ablation.py --sft`` runs it as its SFT rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_TRAINING_TEMPLATE = (  # SmolLM2's own template, the assistant's content and end of turn marked for the loss
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def conversations(recipe: str, tokenizer) -> list[dict]:
    """The recipe's training dialogs as chat conversations (``{"messages": [...]}``), one per dialog and bot side."""
    from persona.commands.cli import parse_recipe
    from persona.configs import DataArguments, ModelArguments, PersonaTrainingArguments
    from persona.data import prepare_corpus
    from persona.data.conversation import conversation_messages
    from persona.data.input_layouts import ChatTemplateLayout

    argv = [recipe, "--max_history", "1000000", "--num_candidates", "1", "--output_dir", "/tmp/unused"]
    (_, data_args, _), _ = parse_recipe(argv, (ModelArguments, DataArguments, PersonaTrainingArguments))
    layout = ChatTemplateLayout.for_tokenizer(tokenizer)
    corpus = prepare_corpus(data_args, layout, max_positions=tokenizer.model_max_length)  # eval: the held-out split
    chats = []
    for dialog in corpus.dialogs["train"]:
        last = dialog["turns"][-1]
        messages = conversation_messages(dialog["persona"], last["history"])
        chats.append({"messages": [*messages, {"role": "assistant", "content": last["candidates"][-1]}]})
    return chats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "smollm2-135m-offline" / "train.yaml"))
    parser.add_argument("--max_train_seconds", type=float, default=900.0, help="The budget (0: none).")
    parser.add_argument("--max_steps", type=int, default=-1, help="A cap on updates (default: the recipe's epochs).")
    parser.add_argument("--per_device_train_batch_size", type=int, default=2, help="Conversations per update.")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--warmup_steps", type=float, help="Default: the recipe's (0.1 of the budget).")
    parser.add_argument("--lr_scheduler_type", default="linear")
    args = parser.parse_args()
    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        sys.exit('TRL is not installed: pip install -e ".[bench]"')
    import yaml
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona.configs import ModelArguments
    from persona.training.time_budget import TimeBudget

    args.output_dir = str(Path(args.output_dir).resolve())
    os.chdir(REPO)  # a recipe's paths are relative to the repository
    recipe = yaml.safe_load(Path(args.recipe).read_text())
    source = {"gguf_file": recipe["gguf_file"]} if recipe.get("gguf_file") else {}
    name = ModelArguments(model_name_or_path=recipe["model_name_or_path"], **source).model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(name, **source)
    chats = conversations(args.recipe, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(name, **source)
    if getattr(model, "hf_quantizer", None) is not None:  # a GGUF de-quantized on load: plain float weights
        model.hf_quantizer.remove_quantization_config(model)
    template = tokenizer.chat_template
    tokenizer.chat_template = SMOLLM2_TRAINING_TEMPLATE if "<|im_start|>" in template else template
    config = SFTConfig(
        output_dir=args.output_dir,
        assistant_only_loss=True,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else recipe.get("warmup_steps", 0),
        max_steps=args.max_steps,
        num_train_epochs=recipe.get("num_train_epochs", 3),
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=1,
        gradient_checkpointing=recipe.get("gradient_checkpointing", False),
        seed=recipe.get("seed", 42),
        max_length=2048,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,  # TRL's default: bf16 autocast, single-threaded and slow on a CPU; persona trains in float32
    )
    budget = TimeBudget(args.max_train_seconds) if args.max_train_seconds else None
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(chats).shuffle(seed=config.seed),
        processing_class=tokenizer,
        callbacks=[budget] if budget else [],
    )
    result = trainer.train()
    tokenizer.chat_template = template  # the model's own template, as persona-eval prompts it
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    seen = trainer.state.global_step * config.per_device_train_batch_size * config.gradient_accumulation_steps
    metrics = {**result.metrics, "updates": trainer.state.global_step, "conversations_seen": seen}
    if budget is not None:
        metrics["last_learning_rate"] = budget.last_learning_rate
    metrics["conversations"] = len(chats)
    (Path(args.output_dir) / "train_results.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
