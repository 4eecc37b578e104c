"""The model card (README.md) of a trained persona model, written for the people who will use it.

It is built from what training left in the model folder (``persona_recipe.yaml``, ``eval_results.json`` and
``config.json``, which says whether the model was trained with token types) and, when given, the
``eval_results.json`` of ``persona-eval`` (F1, hits@k).
Its metadata carries the tags ``persona-chat`` and ``conversational`` and a ``model-index`` with the
evaluation metrics, so that the Hub shows them.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from persona.data.input_layouts import layout_class
from persona.hub_names import is_hub_id
from persona.metrics import metric_definition
from persona.model.facts import PersonaFacts

PUBLISHED_METRICS = (
    "perplexity",
    "hits@1",
    "hits@5",
    "hits@10",
    "lm_hits@1",
    "pmi_hits@1",
    "persona_hits@1",
    "persona_gain",
    "persona_mc_hits@1",
    "contradict@1",
    "consistency",
    "contradiction_rate",
    "f1",
    "ended",
)
TAGS = ["persona-chat", "conversational", "transfertransfo", "persona"]


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def collect_metrics(model_dir: Path, eval_results: Path | None = None) -> dict:
    """The metrics to publish: the training run's evaluation, overridden by ``persona-eval``'s results if given.

    Returns ``{"metrics": {name: value}, "num_turns": int, "num_candidates": float, "split": str, "source": str}``.
    """
    training = _read(model_dir / "eval_results.json")
    metrics = {
        name: training[f"eval_{name}"]
        for name in ("perplexity", "hits@1", "lm_hits@1", "pmi_hits@1")
        if f"eval_{name}" in training
    }
    found = {
        "metrics": metrics,
        "num_turns": training.get("eval_num_turns"),
        "num_candidates": training.get("eval_num_candidates"),
    }
    found.update(split="evaluation split of training", source="persona-train")
    if eval_results is not None:
        evaluation = json.loads(Path(eval_results).read_text())
        found["metrics"] = {name: evaluation[name] for name in PUBLISHED_METRICS if name in evaluation}
        turns = evaluation.get("num_turns", {})
        found.update(
            num_turns=turns.get("hits"), num_f1_turns=turns.get("f1"), num_candidates=evaluation.get("num_candidates")
        )
        found.update(split=evaluation.get("split"), source="persona-eval")
    return found


def _base_model(recipe: dict) -> str | None:
    name = recipe.get("model_name_or_path")
    return name if name and is_hub_id(name) else None


def _dataset(recipe: dict) -> str:
    return recipe.get("dataset_path") or "PersonaChat (transfer-learning-conv-ai's personachat_self_original.json)"


def model_card(
    model_dir: str | Path, *, hub_model_id: str | None = None, eval_results: str | Path | None = None
) -> ModelCard:
    """The card of the model in ``model_dir`` (to be published as ``hub_model_id``)."""
    model_dir = Path(model_dir)
    recipe_path = model_dir / "persona_recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text()) if recipe_path.exists() else {}
    found = collect_metrics(model_dir, Path(eval_results) if eval_results else None)
    repo = hub_model_id or model_dir.name
    base = _base_model(recipe)
    dataset = _dataset(recipe)
    data = ModelCardData(
        language="en",
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS,
        base_model=base,
        datasets=[dataset] if is_hub_id(dataset) else None,
        model_name=repo,
        eval_results=[
            EvalResult(
                task_type="text-generation",
                task_name="Persona dialogue",
                dataset_type=dataset if is_hub_id(dataset) else "persona-chat",
                dataset_name=dataset,
                dataset_split=found["split"],
                metric_type=name,
                metric_name=name,
                metric_value=round(float(value), 4),
            )
            for name, value in found["metrics"].items()
        ]
        or None,
    )
    config = _read(model_dir / "config.json")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(repo, recipe, found, base, dataset, config)}")


def _hyperparameters(recipe: dict) -> list[str]:
    skip = {"dataset_cache", "output_dir", "report_to", "logging_steps", "hub_model_id", "push_to_hub"}
    rows = ["| field | value |", "| --- | --- |"]
    rows += [f"| `{name}` | `{value}` |" for name, value in recipe.items() if name not in skip]
    return rows


def _metrics_table(found: dict) -> list[str]:
    if not found["metrics"]:
        return ["No evaluation was recorded: run `persona-eval` and publish with `persona-push --eval_results`."]
    rows = ["| metric | value | what it measures |", "| --- | --- | --- |"]
    rows += [f"| {name} | {value:.4f} | {metric_definition(name)} |" for name, value in found["metrics"].items()]
    turns = f"{found['num_turns']:,}" if found.get("num_turns") else "an unrecorded number of"
    candidates = f"{found['num_candidates']:.0f}" if found.get("num_candidates") else "its"
    note = f"Measured by `{found['source']}` on {turns} turns ({found['split']}), each with {candidates} candidates"
    if found.get("num_f1_turns"):
        note += f"; F1 over {found['num_f1_turns']:,} generated replies"
    return [*rows, "", note + "."]


def _template_note(config: dict) -> list[str]:
    """What the saved chat template renders, for the model's layout and token types."""
    facts = PersonaFacts.of(config)
    return layout_class(facts.layout).template_note(facts.token_types)


def _chat_section(repo: str, config: dict) -> list[str]:
    """How to chat with the model: persona-chat, and plain transformers through the saved chat template."""
    return [
        "## Chat with it",
        "",
        "With persona (fed exactly as in training):",
        "",
        "```bash",
        f'persona-chat --model_name_or_path {repo} --persona "i love cats." --persona "i work as a nurse."',
        "```",
        "",
        "With plain transformers, through the chat template saved with the tokenizer (the system message is the",
        "persona; a speaker's consecutive messages are one utterance):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
        'messages = [{"role": "system", "content": "i love cats. i work as a nurse."},',
        '            {"role": "user", "content": "hi! what do you do for a living?"}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
        "return_dict=True)",
        "reply = model.generate(**inputs)  # the saved generation config samples as the reference did",
        'print(tokenizer.decode(reply[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        *_template_note(config),
        "",
    ]


def _body(repo: str, recipe: dict, found: dict, base: str | None, dataset: str, config: dict) -> str:
    start = (
        f"`{base}`"
        if base
        else "a model built from a config (random weights)"
        if recipe.get("model_config")
        else "a causal language model"
    )
    return "\n".join(
        [
            f"# {repo}",
            "",
            f"A persona chatbot trained from {start} with the TransferTransfo recipe (Wolf et al., 2019): a",
            "language-modelling loss on the gold reply plus a next-utterance classification loss that ranks the gold",
            "reply above distractors, given the bot's persona sentences and the dialogue history. Trained with",
            "the `persona` pipeline (Hugging Face `Trainer`, `datasets` and `accelerate`).",
            "",
            *_chat_section(repo, config),
            "## Evaluation",
            "",
            *_metrics_table(found),
            "",
            "## Training",
            "",
            f"Data: `{dataset}`. The recipe as run:",
            "",
            *_hyperparameters(recipe),
            "",
            *CLOSING_SECTIONS,
        ]
    )


CLOSING_SECTIONS = [
    "## Limitations",
    "",
    "- It imitates crowd-sourced chit-chat: replies are short, generic and can contradict the persona or",
    "  earlier turns; it has no knowledge beyond its persona and no notion of truth.",
    "- It may reproduce biases of its pretraining data and of the dialogue corpus. Do not deploy it where",
    "  its replies could be taken as advice.",
    "- Metrics come from the corpus's own distribution; hits@1 depends on how distractors were drawn.",
    "",
    "## Citation",
    "",
    "```bibtex",
    "@article{wolf2019transfertransfo,",
    "  title={TransferTransfo: A Transfer Learning Approach for Neural Network Based Conversational Agents},",
    "  author={Wolf, Thomas and Sanh, Victor and Chaumond, Julien and Delangue, Clement},",
    "  journal={arXiv preprint arXiv:1901.08149},",
    "  year={2019}",
    "}",
    "```",
    "",
]


def write_model_card(model_dir: str | Path, **kwargs) -> Path:
    """Write :func:`model_card` as ``model_dir/README.md``; returns its path."""
    path = Path(model_dir) / "README.md"
    path.write_text(str(model_card(model_dir, **kwargs)))
    return path
