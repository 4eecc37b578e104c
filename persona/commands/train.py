"""``persona-train RECIPE.yaml [--field value ...]``: fine-tune a persona chatbot with the dual loss.

Also runs under ``accelerate launch [--config_file accelerate_configs/X.yaml] -m persona.commands.train RECIPE.yaml``.
The run itself is :func:`persona.training.fine_tune.fine_tune`; the token of ``push_to_hub`` comes from ``HF_TOKEN``
or ``hf auth login`` and is never written anywhere.
"""

from __future__ import annotations

import sys

from persona.commands.cli import cli_entry, parse_recipe, setup_logging
from persona.configs import RECIPE_CLASSES
from persona.training.fine_tune import fine_tune


@cli_entry
def main(argv: list[str]) -> int:
    """Parse the recipe, then train, evaluate and save."""
    (model_args, data_args, training_args), recipe = parse_recipe(
        argv, RECIPE_CLASSES, prog="persona-train", description=__doc__
    )
    setup_logging(training_args.should_log, training_args)
    fine_tune(model_args, data_args, training_args, recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
