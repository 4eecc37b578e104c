"""``persona-eval RECIPE.yaml [--field value ...]``: ConvAI2's automatic metrics (perplexity, hits@k, lm_hits@k, F1)
for a persona model, or for a causal LM prompted through its chat template, on the same turns.

Also under ``accelerate launch -m persona.commands.eval RECIPE.yaml`` (turns sharded over the processes and
gathered). Writes ``eval_results.json``, ``generations.jsonl`` and ``report.md`` to ``output_dir``
(:mod:`persona.training.evaluation`).
"""

from __future__ import annotations

import sys

from persona.commands.cli import cli_entry, parse_recipe, setup_logging
from persona.configs import DataArguments, ModelArguments, PersonaTrainingArguments
from persona.model.generation import DecodingArguments
from persona.training.evaluation import EvalArguments, evaluate_model


@cli_entry
def main(argv: list[str]) -> int:
    """Score the candidates, generate replies, and write the results, generations and report."""
    classes = (ModelArguments, DataArguments, PersonaTrainingArguments, EvalArguments, DecodingArguments)
    (model_args, data_args, run_args, eval_args, decoding), recipe = parse_recipe(
        argv, classes, prog="persona-eval", description=__doc__
    )
    setup_logging()
    evaluate_model(model_args, data_args, run_args, eval_args, decoding, recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
