"""The command line of every persona command: recipes with overrides, one logging set-up, one error wrapper.

``persona-train recipes/gpt2/train.yaml --learning_rate 1e-4`` reads the recipe, then lets each
``--field value`` on the command line override it (:func:`parse_recipe`). The reference's flag names
(``--model_checkpoint``, ``--lr``, ``--n_epochs``, ``--max_norm``, ``--train_batch_size``,
``--valid_batch_size``) are accepted as aliases, in recipes and on the command line. :func:`cli_entry`
turns a :class:`~persona.errors.PersonaError` into one line and exit status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser
from transformers.utils import logging as hf_logging

from persona.configs import RECIPE_CLASSES
from persona.errors import ConfigError, PersonaError

logger = logging.getLogger("persona")

REFERENCE_ALIASES = {
    "model_checkpoint": "model_name_or_path",
    "model": "model_name_or_path",
    "lr": "learning_rate",
    "n_epochs": "num_train_epochs",
    "max_norm": "max_grad_norm",
    "train_batch_size": "per_device_train_batch_size",
    "valid_batch_size": "per_device_eval_batch_size",
}
SECRET_FIELDS = {"hub_token", "api_key"}  # never in a saved recipe


class _RecipeParser(HfArgumentParser):
    """HfArgumentParser whose errors are ConfigErrors naming the recipe, not SystemExits."""

    source = "command line"

    def error(self, message: str):  # argparse's hook for bad values
        raise ConfigError(message, where=self.source, fix="give the field a value of the type its help names (persona-train --help).")


def _to_argv(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return [f"--{name}", str(value).lower()]
    if isinstance(value, dict):
        return [f"--{name}", json.dumps(value)]
    if isinstance(value, (list, tuple)):
        return [f"--{name}", *map(str, value)]
    return [f"--{name}", str(value)]


def _canonical(name: str, known: set[str], where: str) -> str:
    name = REFERENCE_ALIASES.get(name, name)
    if name not in known:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see persona-train --help for the fields."
        raise ConfigError(f"unknown field '{name}'", where=where, fix=f"remove or rename it; {hint}")
    return name


def read_recipe(path: str) -> dict[str, Any]:
    """A recipe file as a mapping; a clear error when it is missing or not a YAML mapping."""
    recipe_path = Path(path)
    if not recipe_path.is_file():
        raise ConfigError("recipe file not found", where=path, fix="check the path (recipes/<model>/train.yaml).")
    try:
        recipe = yaml.safe_load(recipe_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML ({str(error).splitlines()[0]})", where=path, fix="fix the YAML syntax.") from None
    if not isinstance(recipe, dict):
        raise ConfigError("a recipe must be a mapping of field: value", where=path, fix="write one 'field: value' per line.")
    return recipe



def parse_recipe(argv: list[str], classes: tuple = RECIPE_CLASSES, ignored: tuple = ()) -> tuple[tuple, dict[str, Any]]:
    """Parse ``[RECIPE.yaml] [--field value ...]`` into instances of ``classes``.

    Fields of the ``ignored`` classes are accepted and dropped (``persona-data`` reads a training
    recipe, for example); any other unknown field is an error. Returns the instances and the recipe as
    run (the file's fields updated by the command line, canonical names, secrets such as ``hub_token``
    left out), which commands save.
    """
    parser = _RecipeParser(classes)
    known = {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}
    dropped = {f.name for cls in ignored for f in dataclasses.fields(cls) if f.init} - known
    known |= dropped
    recipe: dict[str, Any] = {}
    if argv and not argv[0].startswith("-"):
        recipe_path, argv = argv[0], argv[1:]
        parser.source = f"{recipe_path} (or its command-line overrides)"
        recipe = {_canonical(str(k), known, recipe_path): v for k, v in read_recipe(recipe_path).items()}
        recipe = {k: v for k, v in recipe.items() if k not in dropped}
    list_fields = {f.name for cls in classes for f in dataclasses.fields(cls) if str(f.type).startswith("list")}
    overrides: dict[str, list[str]] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument '{token}'", where="command line", fix="write overrides as --field value.")
        name, _, inline = token[2:].partition("=")
        name = _canonical(name.replace("-", "_"), known, "command line")
        values = [inline] if inline else []
        index += 1
        while not inline and index < len(argv) and not argv[index].startswith("--"):
            values.append(argv[index])
            index += 1
        if name in dropped:
            continue
        # a repeated list field collects its values (--persona a --persona b); any other field: the last wins
        overrides[name] = overrides.get(name, []) + values if name in list_fields else values
    merged = set(recipe) | set(overrides)
    args = [a for k, v in recipe.items() for a in _to_argv(k, v)] + [a for k, v in overrides.items() for a in (f"--{k}", *v)]
    try:
        instances = parser.parse_args_into_dataclasses(args=args, look_for_args_file=False)
    except ValueError as error:  # the dataclasses' own checks (bf16 without support, bad combinations)
        raise ConfigError(str(error).splitlines()[0], where=parser.source, fix="change the value the message names.") from None
    parsed = {f.name: getattr(i, f.name) for i in instances for f in dataclasses.fields(i) if f.name in merged - SECRET_FIELDS}
    return tuple(instances), {name: getattr(value, "value", value) for name, value in parsed.items()}



def setup_logging(main_process: bool = True, training_args=None) -> None:
    """persona's progress on stderr (stdout stays for data: statistics, JSON lines), at INFO on the main process
    (WARNING on the others), with the time; with ``training_args``, transformers' messages at the Trainer's
    level for this process, in the same stream."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    if training_args is not None:
        hf_logging.set_verbosity(training_args.get_process_log_level())
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main(argv)`` so user errors exit 2 with one line and no traceback.

    ``--debug`` anywhere on the command line re-raises the error with its traceback.
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv
        if debug:
            argv.remove("--debug")
        try:
            return main(argv) or 0
        except PersonaError as error:
            if debug:
                raise
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
