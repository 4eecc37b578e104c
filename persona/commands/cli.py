"""The command line of every persona command: a recipe whose values are the parser's defaults, one logging set-up,
one error wrapper.

``persona-train recipes/gpt2/train.yaml --learning_rate 1e-4`` reads the recipe, makes its values the defaults of
an ``HfArgumentParser`` over the command's dataclasses, then parses the command line, which overrides them (as
TRL's parser does with ``--config``). ``--help`` lists every field with its help and its default (the recipe's
value when a recipe comes first). The reference's flag names (``--model_checkpoint``, ``--lr``, ``--n_epochs``,
``--max_norm``, ``--train_batch_size``, ``--valid_batch_size``) are aliases of the fields, declared in the
dataclasses. :func:`cli_entry` turns a :class:`~persona.errors.PersonaError` into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser
from transformers.utils import logging as hf_logging

from persona.configs import RECIPE_CLASSES
from persona.errors import ConfigError, Interrupted, PersonaError
from persona.interrupts import stopping_on_signals

logger = logging.getLogger("persona")

SECRET_FIELDS = {"hub_token", "api_key", "engine_api_key"}  # never in a saved recipe
RECIPE_USAGE = "[RECIPE.yaml] [--field value ...]"
EPILOG = (
    "A recipe (YAML, field: value) may come first: its values become the defaults above, and every --field on the "
    "command line overrides them (a mapping such as model_config as JSON there). --debug shows the traceback of an "
    "error."
)


class _RepeatableList(argparse._StoreAction):
    """A list field: the command line replaces the recipe's list, and repeating the flag adds to it
    (``--persona "i like cats." --persona "i am tall."``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_lists_given", set())
        previous = getattr(namespace, self.dest) if self.dest in given else []
        setattr(namespace, self.dest, [*previous, *values])
        given.add(self.dest)


class RecipeParser(HfArgumentParser):
    """``HfArgumentParser`` over a command's dataclasses, whose defaults a recipe can set, and whose errors are
    :class:`~persona.errors.ConfigError` naming the recipe instead of a usage message and ``SystemExit(2)``."""

    def __init__(self, classes: tuple, prog: str, description: str | None = None, usage: str = RECIPE_USAGE):
        self.source = "command line"
        super().__init__(
            classes,
            prog=prog,
            usage=f"{prog} {usage}",
            description=description,
            epilog=EPILOG,
            allow_abbrev=False,
        )

    def add_argument(self, *args, **kwargs):
        """As argparse's, but list fields take :class:`_RepeatableList`."""
        if kwargs.get("nargs") == "+":
            kwargs["action"] = _RepeatableList
        return super().add_argument(*args, **kwargs)

    def error(self, message: str):  # argparse's hook for bad values
        raise ConfigError(
            message, where=self.source, fix=f"give the field a value of the type its help names ({self.prog} --help)."
        )

    def field_action(self, name: str) -> argparse.Action | None:
        """The action of a field, by its name or one of its aliases."""
        return self._option_string_actions.get(f"--{name}")

    def set_recipe(self, recipe: dict[str, Any], where: str) -> None:
        """Make the recipe's values the defaults, each checked against its field's type and choices."""
        self.source = f"{where} (or its command-line overrides)"
        defaults = {}
        for name, value in recipe.items():
            action = self.field_action(name)
            defaults[action.dest] = self._typed(action, value, where)
        self.set_defaults(**defaults)

    def _typed(self, action: argparse.Action, value: Any, where: str) -> Any:
        """A recipe value as the field's type, with argparse's own message when it is not one."""
        if value is None or isinstance(value, dict):  # null; a mapping (model_config) stays one
            return value
        if isinstance(value, list) and action.nargs == "+":
            return [self._typed_scalar(action, item, where) for item in value]
        return self._typed_scalar(action, value, where)

    def _typed_scalar(self, action: argparse.Action, value: Any, where: str) -> Any:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            typed = self._get_value(action, text)
            self._check_value(action, typed)
        except argparse.ArgumentError as error:
            raise ConfigError(
                str(error), where=where, fix=f"give the field a value of the type its help names ({self.prog} --help)."
            ) from None
        return typed


def _field_names(classes: tuple) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}


def _unknown_field(name: str, parser: RecipeParser, where: str) -> ConfigError:
    known = sorted({s[2:] for s in parser._option_string_actions if s.startswith("--")})
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"see {parser.prog} --help for the fields."
    return ConfigError(f"unknown field '{name}'", where=where, fix=f"remove or rename it; {hint}")


def read_recipe(path: str) -> dict[str, Any]:
    """A recipe file as a mapping; a clear error when it is missing or not a YAML mapping."""
    recipe_path = Path(path)
    if not recipe_path.is_file():
        raise ConfigError("recipe file not found", where=path, fix="check the path (recipes/<model>/train.yaml).")
    try:
        recipe = yaml.safe_load(recipe_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(
            f"not valid YAML ({str(error).splitlines()[0]})", where=path, fix="fix the YAML syntax."
        ) from None
    if not isinstance(recipe, dict):
        raise ConfigError(
            "a recipe must be a mapping of field: value", where=path, fix="write one 'field: value' per line."
        )
    return recipe


def _without_ignored(argv: list[str], ignored: set[str]) -> list[str]:
    """``argv`` less the ``--field value...`` of the ``ignored`` fields."""
    kept, skipping = [], False
    for token in argv:
        if token.startswith("--"):
            skipping = token[2:].partition("=")[0].replace("-", "_") in ignored
        if not skipping:
            kept.append(token)
    return kept


def parse_recipe(
    argv: list[str],
    classes: tuple = RECIPE_CLASSES,
    ignored: tuple = (),
    prog: str = "persona",
    description: str | None = None,
    usage: str = RECIPE_USAGE,
) -> tuple[tuple, dict[str, Any]]:
    """Parse ``[RECIPE.yaml] [--field value ...]`` into instances of ``classes``.

    Fields of the ``ignored`` classes are accepted and dropped (``persona-data`` reads a training recipe, for
    example); any other unknown field is an error that suggests the closest field. ``usage`` is the synopsis after
    the command's name in ``--help``. Returns the instances and the
    recipe as run (the fields the file or the command line set, with their parsed values, secrets such as
    ``hub_token`` left out), which commands save. ``--help`` prints every field and exits 0.
    """
    parser = RecipeParser(classes, prog=prog, description=description, usage=usage)
    dropped = _field_names(ignored) - _field_names(classes)
    given: set[str] = set()
    if argv and not argv[0].startswith("-"):
        recipe_path, argv = argv[0], argv[1:]
        recipe = {}
        for name, value in read_recipe(recipe_path).items():
            action = parser.field_action(str(name))
            if action is None and str(name) not in dropped:
                raise _unknown_field(str(name), parser, recipe_path)
            if action is not None:
                recipe[str(name)] = value
                given.add(action.dest)
        parser.set_recipe(recipe, recipe_path)
    argv = _without_ignored(argv, dropped)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((token for token in unknown if token.startswith("-")), None)
        if flag is None:
            raise ConfigError(
                f"unexpected argument '{unknown[0]}'", where="command line", fix="write overrides as --field value."
            )
        raise _unknown_field(flag.lstrip("-").partition("=")[0], parser, "command line")
    given |= {
        action.dest for token in argv if (action := parser.field_action(token[2:].partition("=")[0])) is not None
    }
    try:
        instances = tuple(
            cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if f.init}) for cls in classes
        )
    except ValueError as error:  # the dataclasses' own checks (bf16 without support, bad combinations)
        raise ConfigError(
            str(error).splitlines()[0], where=parser.source, fix="change the value the message names."
        ) from None
    as_run = {
        f.name: getattr(i, f.name) for i in instances for f in dataclasses.fields(i) if f.name in given - SECRET_FIELDS
    }
    return instances, {name: getattr(value, "value", value) for name, value in as_run.items()}


def first_argument_as(name: str, argv: list[str]) -> list[str]:
    """``argv`` with a leading positional argument given as ``--name`` (``persona-push RUN_DIR ...``)."""
    return ["--" + name, argv[0], *argv[1:]] if argv and not argv[0].startswith("-") else argv


def setup_logging(main_process: bool = True, training_args=None) -> None:
    """persona's progress on stderr (stdout stays for data: statistics, JSON lines), at INFO on the main process
    (WARNING on the others), with the time; with ``training_args``, transformers' messages at the Trainer's
    level for this process, in the same stream."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    if training_args is not None:
        hf_logging.set_verbosity(training_args.get_process_log_level())
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main(argv)`` so user errors exit 2 with one line and no traceback.

    ``--debug`` anywhere on the command line re-raises the error with its traceback; ``--help`` returns 0. SIGTERM
    and SIGINT (Ctrl-C) stop the command through its ``finally`` blocks (no partial cache or output is left) with
    128 + the signal's number (:mod:`persona.interrupts`); persona-train stops at the end of an optimizer step with
    a checkpoint.
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv
        if debug:
            argv.remove("--debug")
        try:
            with stopping_on_signals():
                return main(argv) or 0
        except Interrupted as stop:
            print(f"stopped: {stop}", file=sys.stderr)
            return 128 + stop.signum
        except SystemExit as done:  # --help and -h: the parser printed the fields
            return done.code if isinstance(done.code, int) else 0
        except PersonaError as error:
            if debug:
                raise
            print(f"error: {error}", file=sys.stderr)
            return 2

    return wrapper
