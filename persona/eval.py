"""``persona-eval RECIPE.yaml [--field value ...]``: ConvAI2's automatic metrics for a persona model.

Also under ``accelerate launch -m persona.eval RECIPE.yaml`` (turns sharded over the processes and
gathered). Writes to ``output_dir``:

- ``eval_results.json``: ``perplexity`` of the gold replies' tokens, ``hits@k`` over every candidate of
  each turn (ranked by the multiple-choice head), ``lm_hits@k`` (the same candidates ranked by their mean
  token log-likelihood), ``f1`` of generated replies (ParlAI's ConvAI2 normalisation), each with the number of turns
  behind it, and the model, data and decoding settings. Fractions are in [0, 1].
- ``generations.jsonl``: ``persona``, ``history``, ``prediction`` and ``gold`` of each generated turn.
- ``report.md``: the metrics and a sample of dialogs with their generated replies.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import set_seed

from persona.cli import cli_entry, parse_recipe, setup_logging
from persona.configs import DataArguments, ModelArguments, PersonaTrainingArguments
from persona.data import prepare_corpus
from persona.generation import DecodingArguments, generate_replies
from persona.loading import load_for_evaluation, max_positions, uses_token_types
from persona.metrics import load_metric
from persona.prompted import PROMPTING, generate_prompted, prompted_corpus
from persona.report import write_report
from persona.trainer import PersonaTrainer, metrics_from_scores

logger = logging.getLogger("persona")


@dataclass
class EvalArguments:
    """Options of persona-eval besides the shared ones: the model and the revision (``ModelArguments``), the
    corpus (``DataArguments``), ``output_dir``, ``per_device_eval_batch_size``, ``forward_mode``,
    ``use_token_types`` and ``seed`` (``PersonaTrainingArguments``), the decoding (``DecodingArguments``)."""

    generation_batch_size: int = field(default=32, metadata={"help": "Turns per batch when generating replies."})
    hits_k: list[int] = field(default_factory=lambda: [1, 5, 10], metadata={"help": "The k of each reported hits@k."})
    max_generation_turns: int | None = field(default=None, metadata={"help": "Generate (for F1) on the first N turns only; default all."})
    report_samples: int = field(default=5, metadata={"help": "Dialogs shown in report.md."})


def score_candidates(model, tokenizer, features, args: PersonaTrainingArguments, hits_k: list[int], prompted: bool) -> dict:
    """Perplexity and hits@k over the split's candidates, through the Trainer (sharded and gathered)."""
    trainer = PersonaTrainer(model=model, args=args, processing_class=tokenizer, wrap_candidates=not prompted)
    scores = trainer.predict(features).predictions
    return metrics_from_scores(scores, args.lm_coef, args.mc_coef, ks=tuple(hits_k))


def generate_turns(model, tokenizer, dialogs, args: EvalArguments, decoding: DecodingArguments, token_types: bool, prompted: bool) -> list[dict]:
    """A generated reply for each turn (the first ``max_generation_turns``), sharded over processes; a prompted
    baseline is prompted through its chat template."""
    turns = [
        {"persona": d["persona"], "history": t["history"], "gold": t["candidates"][-1]}
        for d in dialogs
        for t in d["turns"]
    ][: args.max_generation_turns]
    state = PartialState()
    with state.split_between_processes(turns) as shard:
        pairs = [(t["persona"], t["history"]) for t in shard]
        if prompted:
            predictions = generate_prompted(model.to(state.device), tokenizer, pairs, decoding, args.generation_batch_size)
        else:
            predictions = generate_replies(
                model.to(state.device), tokenizer, pairs, decoding, max_positions=max_positions(model.config),
                batch_size=args.generation_batch_size, token_types=token_types, progress=state.is_main_process,
            )
        records = [{**t, "prediction": p} for t, p in zip(shard, predictions)]
    return gather_object(records) if state.num_processes > 1 else records


def write_outputs(out: Path, results: dict, records: list[dict], samples: int) -> None:
    """``eval_results.json``, ``generations.jsonl`` and ``report.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_results.json").write_text(json.dumps(results, indent=2))
    with open(out / "generations.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps({k: record[k] for k in ("persona", "history", "prediction", "gold", "f1")}) + "\n")
    write_report(results, records, out / "report.md", samples=samples)
    logger.info("perplexity %.2f, hits@1 %s, lm_hits@1 %.3f over %d turns, f1 %.3f over %d turns; written to %s", results["perplexity"],
                f"{results['hits@1']:.3f}" if "hits@1" in results else "(no head)", results["lm_hits@1"], results["num_turns"]["hits"], results["f1"], len(records), out)


@cli_entry
def main(argv: list[str]) -> int:
    """Score the candidates, generate replies, and write the results, generations and report."""
    classes = (ModelArguments, DataArguments, PersonaTrainingArguments, EvalArguments, DecodingArguments)
    (model_args, data_args, run_args, eval_args, decoding), recipe = parse_recipe(argv, classes)
    setup_logging()
    set_seed(run_args.seed)
    model, tokenizer, prompted = load_for_evaluation(model_args)
    run_args.use_token_types = False if prompted else uses_token_types(model.config, run_args.use_token_types)
    state = PartialState()
    if prompted:
        logger.info("A prompted baseline: %s is evaluated through %s; it has no multiple-choice head, so hits@k is left out", model_args.model_name_or_path, PROMPTING)
        features, dialogs, split = prompted_corpus(data_args, tokenizer)
    else:
        with state.main_process_first():
            corpus = prepare_corpus(data_args, tokenizer, max_length=max_positions(model.config), roles=("eval",))
        features, dialogs, split = corpus.features["eval"], corpus.dialogs["eval"], corpus.stats["splits"]["eval"]
    metrics = score_candidates(model, tokenizer, features, run_args, eval_args.hits_k, prompted)
    records = generate_turns(model, tokenizer, dialogs, eval_args, decoding, run_args.use_token_types, prompted)
    f1 = load_metric("convai2_f1").compute(predictions=[r["prediction"] for r in records], references=[r["gold"] for r in records])
    for record, score in zip(records, f1["f1_per_example"]):
        record["f1"] = score
    if state.is_main_process:
        results = {
            "model": model_args.model_name_or_path,
            "dataset": data_args.dataset_path or "PersonaChat",
            "split": split["split"],
            **({"prompted": PROMPTING} if prompted else {}),
            "perplexity": metrics["perplexity"],
            **({} if prompted else {f"hits@{k}": metrics[f"hits@{k}"] for k in eval_args.hits_k}),
            **{f"lm_hits@{k}": metrics[f"lm_hits@{k}"] for k in eval_args.hits_k},
            "f1": f1["f1"],
            "num_turns": {"perplexity": metrics["num_turns"], "hits": metrics["num_turns"], "f1": len(records)},
            "num_candidates": metrics["num_candidates"],
            "skipped": split["skipped"],
            "token_types": run_args.use_token_types,
            "num_reply_tokens": metrics["num_reply_tokens"],
            "lm_loss": metrics["lm_loss"],
            **({} if prompted else {"mc_loss": metrics["mc_loss"]}),
            "decoding": dataclasses.asdict(decoding),
            "data": {k: v for k, v in dataclasses.asdict(data_args).items() if k not in ("dataset_cache", "preprocessing_num_workers")},
            "recipe": recipe,
        }
        write_outputs(Path(run_args.output_dir), results, records, eval_args.report_samples)
    state.wait_for_everyone()
    state.destroy_process_group()  # before the interpreter exits (see persona.train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
