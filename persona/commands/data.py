"""``persona-data RECIPE.yaml [--field value ...]``: prepare and cache a corpus exactly as ``persona-train
RECIPE.yaml`` will, and print its statistics.

Also ``persona-data --dataset_path FILE --tokenizer_name_or_path DIR`` with no recipe. ``--stats_json FILE``
writes the statistics as JSON (dialogs, examples, candidates, tokens, padding_ratio, truncated and skipped records
per split, and cache_path). ``--export_messages DIR`` writes the corpus as OpenAI messages JSONL instead
(:mod:`persona.data.messages_export`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from persona.commands.cli import cli_entry, parse_recipe, setup_logging
from persona.configs import RECIPE_CLASSES, DataArguments, ModelArguments
from persona.data import prepare_corpus
from persona.data.messages_export import export_messages
from persona.model.loading import layout_for_training, preparation_length


@dataclass
class PrepareArguments:
    """Options of persona-data itself."""

    stats_json: str | None = field(default=None, metadata={"help": "Also write the statistics to this JSON file."})
    splits: str = field(default="train,eval", metadata={"help": "Comma-separated roles to prepare: train, eval."})
    export_messages: str | None = field(
        default=None,
        metadata={
            "help": "Instead of preparing, write the corpus's dialogs as OpenAI messages JSONL into this folder (one "
            "SPLIT.jsonl per split, one record per bot side and conversation, the persona as the system message), "
            "for TRL, axolotl or a fine-tuning service; persona reads them back as the same dialogs."
        },
    )


@cli_entry
def main(argv: list[str]) -> int:
    """Prepare the recipe's corpus with its tokenizer and print the statistics."""
    classes = (ModelArguments, DataArguments, PrepareArguments)
    (model_args, data_args, prepare_args), given = parse_recipe(
        argv, classes, ignored=RECIPE_CLASSES, prog="persona-data", description=__doc__
    )
    setup_logging()
    if prepare_args.export_messages:
        print(json.dumps(export_messages(data_args, Path(prepare_args.export_messages)), indent=2))
        return 0
    layout, _ = layout_for_training(model_args, data_args.input_layout)
    roles = tuple(role.strip() for role in prepare_args.splits.split(",") if role.strip())
    # A tokenizer alone names no model: its own limit, without looking for the default model on the Hub.
    model_named = bool({"model_name_or_path", "model_config"} & given.keys()) or not model_args.tokenizer_name_or_path
    max_positions = preparation_length(model_args, layout.tokenizer, model_named)
    corpus = prepare_corpus(data_args, layout, max_positions=max_positions, roles=roles)
    print(json.dumps(corpus.stats, indent=2))
    if prepare_args.stats_json:
        with open(prepare_args.stats_json, "w") as handle:
            json.dump(corpus.stats, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
