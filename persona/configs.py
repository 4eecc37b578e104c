"""Recipes: YAML files parsed into documented dataclasses, with command-line overrides.

``persona-train recipes/gpt2/train.yaml --learning_rate 1e-4`` reads the recipe, then lets each
``--field value`` on the command line override it. The seed's flag names (``--model_checkpoint``,
``--lr``, ``--n_epochs``, ``--max_norm``, ``--train_batch_size``, ``--valid_batch_size``) are accepted
as aliases, in recipes and on the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from persona.errors import ConfigError

SEED_ALIASES = {
    "model_checkpoint": "model_name_or_path",
    "model": "model_name_or_path",
    "lr": "learning_rate",
    "n_epochs": "num_train_epochs",
    "max_norm": "max_grad_norm",
    "train_batch_size": "per_device_train_batch_size",
    "valid_batch_size": "per_device_eval_batch_size",
}


@dataclass
class ModelArguments:
    """Which model and tokenizer to start from."""

    model_name_or_path: str = field(
        default="openai-gpt",
        metadata={"help": "Hub id or local folder of the base model (the seed's --model_checkpoint / --model)."},
    )
    model_config: str | None = field(
        default=None,
        metadata={
            "help": "Build a fresh model from this config instead of loading weights: a mapping in YAML, a JSON "
            "object on the command line, with model_type (gpt2, openai-gpt) and sizes. Offline runs and tests use it."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or folder of the tokenizer; defaults to model_name_or_path."},
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": "A GGUF checkpoint inside model_name_or_path (a folder or Hub id), de-quantized on load by "
                  "transformers (needs the gguf package); its tokenizer too unless tokenizer_name_or_path is set."},
    )
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train LoRA adapters (PEFT) instead of every weight; the multiple-choice head and the new "
                  "special tokens' embeddings are trained fully; the adapters are merged into the saved model."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Module names that get adapters (q_proj v_proj ..., c_attn for GPT-2); all-linear: every linear "
                  "layer of the transformer body."},
    )
    revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run a Hub model's own Python code. Off unless you trust that repository."},
    )


@dataclass
class DataArguments:
    """Which corpus to read and how to turn it into features."""

    dataset_path: str = field(
        default="",
        metadata={
            "help": "A corpus file or folder (PersonaChat JSON, ParlAI text, conversation CSV/JSON/JSONL), a URL, "
            "or a Hub dataset id. Empty: PersonaChat from the seed's URL (downloaded once into dataset_cache)."
        },
    )
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Layout of the corpus: auto (detected from the content), personachat_json, parlai, "
            "conversations or hub.",
            "choices": ["auto", "personachat_json", "parlai", "conversations", "hub"],
        },
    )
    eval_dataset_path: str | None = field(
        default=None,
        metadata={"help": "A separate corpus to evaluate on; otherwise the corpus's own eval_split is used."},
    )
    dataset_cache: str = field(
        default="./dataset_cache",
        metadata={"help": "Folder of the tokenized Arrow cache (one sub-folder per corpus, tokenizer and options)."},
    )
    train_split: str = field(default="train", metadata={"help": "The split to train on."})
    eval_split: str = field(default="valid", metadata={"help": "The split to evaluate on."})
    validation_split_size: float = field(
        default=0.0,
        metadata={
            "help": "Hold out this fraction (<1) or number (>=1) of the training split's dialogs, chosen with "
            "sampling_seed, as the evaluation split instead of the corpus's own. 0: use eval_split."
        },
    )
    bot_side: str = field(
        default="both",
        metadata={
            "help": "For whole conversations: which speaker is the bot. both (default, as ConvAI2 does: each "
            "conversation gives one dialog per side), user1 or user2.",
            "choices": ["both", "user1", "user2"],
        },
    )
    num_candidates: int = field(
        default=2, metadata={"help": "Candidates per training turn, gold included (the last ones are kept)."}
    )
    eval_num_candidates: int = field(
        default=20, metadata={"help": "Candidates per evaluation turn, gold included (ConvAI2 uses 20)."}
    )
    max_history: int = field(
        default=2, metadata={"help": "Previous exchanges kept: the last 2*max_history+1 utterances."}
    )
    personality_permutations: int = field(
        default=1, metadata={"help": "Copies of each training dialog, the persona sentences rotated each time."}
    )
    max_input_length: int | None = field(
        default=None,
        metadata={"help": "Longest input in tokens; defaults to the model's positions. Longer inputs lose the "
                  "oldest history first, then persona sentences, never the reply."},
    )
    max_train_dialogs: int | None = field(
        default=None, metadata={"help": "Use only the first N training dialogs (quick runs)."}
    )
    max_eval_dialogs: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation dialogs (quick runs)."}
    )
    sampling_seed: int = field(
        default=0, metadata={"help": "Seed of distractor sampling and of the held-out split."}
    )
    preprocessing_num_workers: int = field(
        default=2, metadata={"help": "Processes used by datasets.map to tokenize large corpora."}
    )
    strict: bool = field(
        default=False,
        metadata={"help": "Stop at the first unusable record (an empty conversation, a turn without its gold reply, a "
                  "reply longer than the model's positions...) instead of skipping it with a warning and counting it."},
    )


@dataclass
class PersonaTrainingArguments(TrainingArguments):
    """Trainer arguments with the dual loss's coefficients and the seed's defaults.

    Every field of ``transformers.TrainingArguments`` is accepted too (``output_dir``, ``seed``,
    ``bf16``, ``report_to``, ``push_to_hub``...).
    """

    lm_coef: float = field(default=1.0, metadata={"help": "Weight of the language-modelling loss."})
    mc_coef: float = field(default=1.0, metadata={"help": "Weight of the multiple-choice (next-utterance) loss."})
    forward_mode: str = field(
        default="shared_prefix",
        metadata={
            "help": "shared_prefix (fast: the persona+history prefix runs once per turn, candidates continue "
            "it, LM logits only where labels are) or classic (every candidate as a full sequence, logits "
            "everywhere, as the reference did).",
            "choices": ["shared_prefix", "classic"],
        },
    )
    use_token_types: bool = field(
        default=True,
        metadata={"help": "Add the speaker embeddings (token types) to the inputs, as TransferTransfo does; false "
                  "feeds the model as its chat template does (no token types)."},
    )
    learning_rate: float = field(default=6.25e-5, metadata={"help": "Peak learning rate (linear decay to 0)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Training examples per device."})
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "Evaluation examples per device."})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "Batches accumulated per update."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "group_by_length (default: batches of similar length, less padding), random, sequential."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator needs every column."})

    def __post_init__(self):
        # Ranks launched without a GPU (accelerate_configs/multi_cpu.yaml) must join on the CPU with gloo;
        # transformers only does so when use_cpu is set, otherwise each rank trains alone.
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            self.use_cpu = True
        super().__post_init__()


RECIPE_CLASSES = (ModelArguments, DataArguments, PersonaTrainingArguments)


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
    name = SEED_ALIASES.get(name, name)
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


SECRET_FIELDS = {"hub_token"}


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


def model_config_dict(model_args: ModelArguments) -> dict[str, Any] | None:
    """``model_config`` as a mapping (it arrives as JSON text), or None."""
    if model_args.model_config is None:
        return None
    try:
        config = json.loads(model_args.model_config)
    except json.JSONDecodeError as error:
        raise ConfigError(f"model_config is not a JSON object ({error.msg})", where="model_config", fix='write it as {"model_type": "gpt2", ...}.') from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError("model_config needs a model_type", where="model_config", fix='add "model_type": "gpt2" (or openai-gpt).')
    return config
