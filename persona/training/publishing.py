"""What a published model carries, and publishing it: the chat template and decoding a trained model is saved with,
the folder staged for the Hub (safetensors, tokenizer, results, model card), and the upload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from persona.configs import ModelArguments
from persona.errors import ConfigError, ModelLoadError, first_line
from persona.model.facts import PersonaFacts
from persona.model.generation import DecodingArguments
from persona.model.loading import LoadedModel, load_tokenizer, trained_layout
from persona.training.model_card import model_card

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


def ready_to_publish(loaded: LoadedModel) -> None:
    """What a trained model carries for plain transformers and persona alike: a chat template that renders its layout
    (persona's for the reference layout; a chat-template model keeps its own), and the reference's decoding
    (sampling, temperature 0.7, top-p 0.9, the other special tokens suppressed) as its generation config."""
    loaded.layout.ready_to_publish()
    loaded.model.generation_config = DecodingArguments().generation_config(loaded)


def _check_model_dir(model_dir: Path, eval_results: str | None) -> None:
    if eval_results and not Path(eval_results).is_file():
        raise ConfigError(
            "eval_results file not found",
            where=eval_results,
            fix="pass the eval_results.json that persona-eval wrote.",
        )
    if not (model_dir / "config.json").exists():
        raise ConfigError(
            "no trained model here (config.json is missing)",
            where=str(model_dir),
            fix="pass the output_dir of persona-train.",
        )
    weights = [p for pattern in ("model.safetensors", "model-*.safetensors") for p in model_dir.glob(pattern)]
    if not weights:
        pickles = [p.name for pattern in PICKLES for p in model_dir.glob(pattern)]
        raise ConfigError(
            f"no safetensors weights (found {pickles or 'none'})",
            where=str(model_dir),
            fix="re-save the model with save_pretrained(safe_serialization=True); pickled weights are not published.",
        )


def stage(model_dir: Path, folder: Path, hub_model_id: str, eval_results: str | None) -> list[Path]:
    """Copy what is published from ``model_dir`` into ``folder``, with the tokenizer and the model card."""
    _check_model_dir(model_dir, eval_results)
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in PUBLISHED:
        for path in model_dir.glob(pattern):
            shutil.copy2(path, folder / path.name)
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=str(model_dir)))
    if not tokenizer.chat_template:  # a model saved without one (a reference checkpoint)
        facts = PersonaFacts.of(json.loads((model_dir / "config.json").read_text()))
        trained_layout(tokenizer, facts).ready_to_publish()
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
        commit = api.upload_folder(
            repo_id=hub_model_id, folder_path=str(folder), commit_message=commit_message, repo_type="model"
        )
    except (HfHubHTTPError, OSError) as error:
        raise ModelLoadError(
            f"cannot upload to the Hub ({first_line(error)})",
            where=hub_model_id,
            fix="check the network and the token (HF_TOKEN or hf auth login, with write access), "
            "or use --dry_run DIR to see what would be uploaded.",
        ) from None
    return commit.commit_url
