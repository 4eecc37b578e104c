"""``persona-export MODEL_DIR --gguf OUT.gguf [--outtype f32|f16|q8_0]``: a trained persona model as one GGUF file.

The file runs in llama.cpp, Ollama and LM Studio: the language model, the tokenizer, the special tokens, the chat
template that renders the model's layout and its generation defaults (see :mod:`persona.model.gguf_export`). A
model trained with token types is refused (train with ``--use_token_types false``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from persona.commands.cli import cli_entry, first_argument_as, parse_recipe, setup_logging
from persona.configs import ModelArguments
from persona.errors import ConfigError
from persona.model.gguf_export import OUTTYPES, check_exportable, export_gguf
from persona.model.loading import base_config, load_trained

logger = logging.getLogger("persona")


@dataclass
class ExportArguments:
    """Options of persona-export (the model folder is the first argument)."""

    model_dir: str = field(metadata={"help": "The folder persona-train wrote (output_dir); also the first argument."})
    gguf: str = field(default="", metadata={"help": "The GGUF file to write (replaced if it exists)."})
    outtype: str = field(
        default="f16",
        metadata={
            "help": "How weights are stored: f32 (exact), f16 (half the size), q8_0 (8-bit blocks, a quarter).",
            "choices": list(OUTTYPES),
        },
    )


@cli_entry
def main(argv: list[str]) -> int:
    """Load the trained model, check that llama.cpp can run it as persona does, write the file."""
    ((args,), _) = parse_recipe(
        first_argument_as("model_dir", argv),
        (ExportArguments,),
        prog="persona-export",
        description=__doc__,
        usage="MODEL_DIR --gguf OUT.gguf [--outtype f32|f16|q8_0]",
    )
    setup_logging()
    if not args.gguf:
        raise ConfigError(
            "--gguf OUT.gguf is required", where="command line", fix="name the file to write, e.g. --gguf bot.gguf."
        )
    if Path(args.gguf).is_dir():
        raise ConfigError("--gguf names a folder", where=args.gguf, fix="name the file to write, e.g. DIR/bot.gguf.")
    folder = Path(args.model_dir)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            "not a model folder (no config.json)", where=str(folder), fix="pass the output_dir persona-train wrote."
        )
    model_args = ModelArguments(model_name_or_path=str(folder))
    check_exportable(base_config(model_args), str(folder))
    loaded = load_trained(model_args)
    summary = export_gguf(loaded, folder, Path(args.gguf), args.outtype)
    logger.info(
        "Wrote %s: %d tensors in %s, %.1f MB (pre-tokenizer %s)",
        summary.path,
        summary.tensors,
        args.outtype,
        summary.size / 1e6,
        summary.pre_tokenizer,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
