"""``persona-push OUTPUT_DIR --hub_model_id USER/NAME [--private] [--eval_results FILE] [--dry_run DIR]``.

Publishes a model that is already trained: the weights (safetensors only), the tokenizer with its
chat template, the generation config, the recipe, the training and evaluation results, the loss curves
and a model card written from them (with ``--eval_results``, the metrics of ``persona-eval``). The
files are gathered into a staging folder and uploaded in one commit with ``huggingface_hub``; the
token comes from ``HF_TOKEN`` or ``huggingface-cli login``. ``--dry_run DIR`` writes exactly that
folder to ``DIR`` and lists it, without the network.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from persona.chat_template import add_chat_template
from persona.cli import cli_entry, parse_recipe, setup_logging
from persona.configs import ModelArguments
from persona.errors import ConfigError, ModelLoadError, first_line
from persona.loading import load_tokenizer
from persona.model_card import model_card

logger = logging.getLogger("persona")

PUBLISHED = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "persona_recipe.yaml",
    "train_results.json",
    "eval_results.json",
    "loss_curves.png",
)
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


@dataclass
class PushArguments:
    """Options of persona-push (the model folder is the first argument)."""

    model_dir: str = field(metadata={"help": "The folder persona-train wrote (output_dir)."})
    hub_model_id: str = field(default="", metadata={"help": "The Hub repository, USER/NAME or ORG/NAME."})
    private: bool = field(default=False, metadata={"help": "Create the repository private (no effect if it exists)."})
    eval_results: str | None = field(default=None, metadata={"help": "persona-eval's eval_results.json, for the card's metrics."})
    dry_run: str | None = field(default=None, metadata={"help": "Write the folder that would be uploaded here, list it, upload nothing."})
    commit_message: str = field(default="persona-push: upload a persona model", metadata={"help": "The commit message."})


def stage(model_dir: Path, folder: Path, hub_model_id: str, eval_results: str | None) -> list[Path]:
    """Copy what is published from ``model_dir`` into ``folder``, with the tokenizer and the model card."""
    if eval_results and not Path(eval_results).is_file():
        raise ConfigError("eval_results file not found", where=eval_results, fix="pass the eval_results.json that persona-eval wrote.")
    if not (model_dir / "config.json").exists():
        raise ConfigError("no trained model here (config.json is missing)", where=str(model_dir), fix="pass the output_dir of persona-train.")
    weights = [p for pattern in ("model.safetensors", "model-*.safetensors") for p in model_dir.glob(pattern)]
    if not weights:
        pickles = [p.name for pattern in PICKLES for p in model_dir.glob(pattern)]
        raise ConfigError(
            f"no safetensors weights (found {pickles or 'none'})",
            where=str(model_dir),
            fix="re-save the model with save_pretrained(safe_serialization=True); pickled weights are not published.",
        )
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in PUBLISHED:
        for path in model_dir.glob(pattern):
            shutil.copy2(path, folder / path.name)
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=str(model_dir)))
    if not tokenizer.chat_template:
        add_chat_template(tokenizer)  # a model trained before templates were saved
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(str(model_card(model_dir, hub_model_id=hub_model_id, eval_results=eval_results)))
    return sorted(p for p in folder.rglob("*") if p.is_file())


def upload(folder: Path, hub_model_id: str, private: bool, commit_message: str) -> str:
    """Create the repository if needed and upload ``folder`` in one commit; returns the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(hub_model_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=hub_model_id, folder_path=str(folder), commit_message=commit_message, repo_type="model")
    except (HfHubHTTPError, OSError) as error:
        raise ModelLoadError(
            f"cannot upload to the Hub ({first_line(error)})",
            where=hub_model_id,
            fix="check the network and the token (HF_TOKEN or huggingface-cli login, with write access), "
            "or use --dry_run DIR to see what would be uploaded.",
        ) from None
    return commit.commit_url


@cli_entry
def main(argv: list[str]) -> int:
    """Stage the model folder, then upload it (or, with ``--dry_run``, list it)."""
    if argv and not argv[0].startswith("-"):
        argv = ["--model_dir", argv[0], *argv[1:]]
    ((args,), _) = parse_recipe(argv, (PushArguments,))
    setup_logging()
    if not args.dry_run and "/" not in args.hub_model_id:
        raise ConfigError("--hub_model_id USER/NAME is required", where="command line", fix="name the repository, e.g. --hub_model_id alice/persona-gpt2.")
    hub_model_id = args.hub_model_id or Path(args.model_dir).resolve().name
    if args.dry_run:
        folder = Path(args.dry_run)
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError("the dry-run folder is not empty", where=str(folder), fix="pass a new or empty folder.")
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".persona-push-", dir=folder.parent) as staging:
            files = stage(Path(args.model_dir), Path(staging) / "folder", hub_model_id, args.eval_results)
            if folder.exists():
                folder.rmdir()
            (Path(staging) / "folder").rename(folder)  # complete or absent, never half-written
        print(f"Would upload to {hub_model_id} ({'private' if args.private else 'public'}), {len(files)} files, now in {folder}:")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                print(f"  {path.relative_to(folder)}  ({path.stat().st_size:,} bytes)")
        return 0
    with tempfile.TemporaryDirectory(prefix="persona-push-") as staging:
        files = stage(Path(args.model_dir), Path(staging), hub_model_id, args.eval_results)
        logger.info("Uploading %d files to %s", len(files), hub_model_id)
        url = upload(Path(staging), hub_model_id, args.private, args.commit_message)
    logger.info("Pushed: %s", url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
