"""``persona-data RECIPE.yaml [--field value ...]``: prepare and cache a corpus, print its statistics.

Also ``persona-data --dataset_path FILE --tokenizer_name_or_path DIR`` with no recipe. ``--stats_json FILE``
writes the statistics as JSON (dialogs, examples, candidates, tokens, padding_ratio, truncated per split,
and cache_path).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field

from persona.cli import cli_entry, parse_recipe, setup_logging
from persona.configs import RECIPE_CLASSES, DataArguments, ModelArguments
from persona.data import prepare_corpus
from persona.errors import ModelLoadError
from persona.loading import base_config, load_tokenizer, max_positions
from persona.special_tokens import add_special_tokens

logger = logging.getLogger("persona")
TOKENIZER_LIMIT = 1024  # where the tokenizer states no limit of its own


@dataclass
class PrepareArguments:
    """Options of persona-data itself."""

    stats_json: str | None = field(default=None, metadata={"help": "Also write the statistics to this JSON file."})
    splits: str = field(default="train,eval", metadata={"help": "Comma-separated roles to prepare: train, eval."})


def input_length(model_args: ModelArguments, tokenizer) -> int:
    """The longest input: the model's positions, as persona-train prepares it (so that both share the cache).

    Where the model's config cannot be read (offline, no ``model_config``), the tokenizer's own limit, with a
    warning that training will prepare again if the model's positions differ.
    """
    try:
        return max_positions(base_config(model_args))
    except ModelLoadError as error:
        limit = min(getattr(tokenizer, "model_max_length", None) or TOKENIZER_LIMIT, TOKENIZER_LIMIT)
        logger.warning("Inputs cut to the tokenizer's %d tokens, not the model's positions (%s); persona-train prepares the "
                       "corpus again if they differ. Pass the recipe's model or model_config to share the cache.", limit, error.what)
        return limit


@cli_entry
def main(argv: list[str]) -> int:
    """Prepare the recipe's corpus with its tokenizer and print the statistics."""
    (model_args, data_args, prepare_args), _ = parse_recipe(argv, (ModelArguments, DataArguments, PrepareArguments), ignored=RECIPE_CLASSES)
    setup_logging()
    tokenizer = load_tokenizer(model_args)
    add_special_tokens(tokenizer)
    max_length = input_length(model_args, tokenizer)
    roles = tuple(role.strip() for role in prepare_args.splits.split(",") if role.strip())
    corpus = prepare_corpus(data_args, tokenizer, max_length=max_length, roles=roles)
    print(json.dumps(corpus.stats, indent=2))
    if prepare_args.stats_json:
        with open(prepare_args.stats_json, "w") as handle:
            json.dump(corpus.stats, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
