"""``persona-data RECIPE.yaml [--field value ...]``: prepare and cache a corpus exactly as ``persona-train
RECIPE.yaml``
will, and print its statistics.

Also ``persona-data --dataset_path FILE --tokenizer_name_or_path DIR`` with no recipe. ``--stats_json FILE``
writes the statistics as JSON (dialogs, examples, candidates, tokens, padding_ratio, truncated and skipped records
per split, and cache_path).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from persona.commands.cli import cli_entry, parse_recipe, setup_logging
from persona.configs import RECIPE_CLASSES, DataArguments, ModelArguments
from persona.data import prepare_corpus
from persona.model.loading import preparation_length, tokenizer_for_training


@dataclass
class PrepareArguments:
    """Options of persona-data itself."""

    stats_json: str | None = field(default=None, metadata={"help": "Also write the statistics to this JSON file."})
    splits: str = field(default="train,eval", metadata={"help": "Comma-separated roles to prepare: train, eval."})


@cli_entry
def main(argv: list[str]) -> int:
    """Prepare the recipe's corpus with its tokenizer and print the statistics."""
    classes = (ModelArguments, DataArguments, PrepareArguments)
    (model_args, data_args, prepare_args), given = parse_recipe(
        argv, classes, ignored=RECIPE_CLASSES, prog="persona-data", description=__doc__
    )
    setup_logging()
    tokenizer, _ = tokenizer_for_training(model_args, data_args.input_layout)
    roles = tuple(role.strip() for role in prepare_args.splits.split(",") if role.strip())
    # A tokenizer alone names no model: its own limit, without looking for the default model on the Hub.
    model_named = bool({"model_name_or_path", "model_config"} & given.keys()) or not model_args.tokenizer_name_or_path
    max_length = preparation_length(model_args, tokenizer, model_named)
    corpus = prepare_corpus(data_args, tokenizer, max_length=max_length, roles=roles)
    print(json.dumps(corpus.stats, indent=2))
    if prepare_args.stats_json:
        with open(prepare_args.stats_json, "w") as handle:
            json.dump(corpus.stats, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
