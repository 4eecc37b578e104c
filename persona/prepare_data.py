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

from persona.configs import RECIPE_CLASSES, DataArguments, ModelArguments, parse_recipe
from persona.data import prepare_corpus
from persona.errors import cli_entry
from persona.modeling import load_tokenizer
from persona.special_tokens import add_special_tokens

DEFAULT_MAX_LENGTH = 1024


@dataclass
class PrepareArguments:
    """Options of persona-data itself."""

    stats_json: str | None = field(default=None, metadata={"help": "Also write the statistics to this JSON file."})
    splits: str = field(default="train,eval", metadata={"help": "Comma-separated roles to prepare: train, eval."})


@cli_entry
def main(argv: list[str]) -> int:
    """Prepare the recipe's corpus with its tokenizer and print the statistics."""
    (model_args, data_args, prepare_args), _ = parse_recipe(argv, (ModelArguments, DataArguments, PrepareArguments), ignored=RECIPE_CLASSES)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tokenizer = load_tokenizer(model_args)
    add_special_tokens(tokenizer)
    max_length = min(getattr(tokenizer, "model_max_length", DEFAULT_MAX_LENGTH) or DEFAULT_MAX_LENGTH, 1 << 20)
    roles = tuple(role.strip() for role in prepare_args.splits.split(",") if role.strip())
    corpus = prepare_corpus(data_args, tokenizer, max_length=max_length, roles=roles)
    print(json.dumps(corpus.stats, indent=2))
    if prepare_args.stats_json:
        with open(prepare_args.stats_json, "w") as handle:
            json.dump(corpus.stats, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
