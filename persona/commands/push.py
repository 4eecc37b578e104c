"""``persona-push OUTPUT_DIR --hub_model_id USER/NAME [--private true] [--eval_results FILE] [--dry_run DIR]``.

Publishes a model that is already trained: the weights (safetensors only), the tokenizer with its
chat template, the generation config, the recipe, the training and evaluation results, the loss curves
and a model card written from them (with ``--eval_results``, the metrics of ``persona-eval``). The
files are gathered into a staging folder and uploaded in one commit with ``huggingface_hub``; the
token comes from ``HF_TOKEN`` or ``hf auth login``. ``--dry_run DIR`` writes exactly that
folder to ``DIR`` and lists it, without the network.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from persona.commands.cli import cli_entry, first_argument_as, parse_recipe, setup_logging
from persona.errors import ConfigError
from persona.training.publishing import stage, upload

logger = logging.getLogger("persona")


@dataclass
class PushArguments:
    """Options of persona-push (the model folder is the first argument)."""

    model_dir: str = field(metadata={"help": "The folder persona-train wrote (output_dir); also the first argument."})
    hub_model_id: str = field(default="", metadata={"help": "The Hub repository, USER/NAME or ORG/NAME."})
    private: bool = field(default=False, metadata={"help": "Create the repository private (no effect if it exists)."})
    eval_results: str | None = field(
        default=None, metadata={"help": "persona-eval's eval_results.json, for the card's metrics."}
    )
    dry_run: str | None = field(
        default=None, metadata={"help": "Write the folder that would be uploaded here, list it, upload nothing."}
    )
    commit_message: str = field(
        default="persona-push: upload a persona model", metadata={"help": "The commit message."}
    )


def dry_run(args: PushArguments, hub_model_id: str) -> None:
    """Write the folder that would be uploaded to ``args.dry_run`` (complete or absent, never half-written) and list
    it."""
    folder = Path(args.dry_run)
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError("the dry-run folder is not empty", where=str(folder), fix="pass a new or empty folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".persona-push-", dir=folder.parent) as staging:
        files = stage(Path(args.model_dir), Path(staging) / "folder", hub_model_id, args.eval_results)
        if folder.exists():
            folder.rmdir()
        (Path(staging) / "folder").rename(folder)
    print(
        f"Would upload to {hub_model_id} ({'private' if args.private else 'public'}), {len(files)} files, now in "
        f"{folder}:"
    )
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(folder)}  ({path.stat().st_size:,} bytes)")


@cli_entry
def main(argv: list[str]) -> int:
    """Stage the model folder, then upload it (or, with ``--dry_run``, list it)."""
    ((args,), _) = parse_recipe(
        first_argument_as("model_dir", argv),
        (PushArguments,),
        prog="persona-push",
        description=__doc__,
        usage="MODEL_DIR --hub_model_id USER/NAME [--field value ...]",
    )
    setup_logging()
    if not args.dry_run and "/" not in args.hub_model_id:
        raise ConfigError(
            "--hub_model_id USER/NAME is required",
            where="command line",
            fix="name the repository, e.g. --hub_model_id alice/persona-gpt2.",
        )
    hub_model_id = args.hub_model_id or Path(args.model_dir).resolve().name
    if args.dry_run:
        dry_run(args, hub_model_id)
        return 0
    with tempfile.TemporaryDirectory(prefix="persona-push-") as staging:
        files = stage(Path(args.model_dir), Path(staging), hub_model_id, args.eval_results)
        logger.info("Uploading %d files to %s", len(files), hub_model_id)
        url = upload(Path(staging), hub_model_id, args.private, args.commit_message)
    logger.info("Pushed: %s", url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
