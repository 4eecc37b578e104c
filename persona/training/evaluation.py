"""A persona-eval run: ConvAI2's automatic metrics for a persona model, or for a prompted baseline on the same turns.

Writes to ``output_dir``:

- ``eval_results.json``: ``perplexity`` of the gold replies' tokens, ``hits@k`` over every candidate of
  each turn (ranked by the multiple-choice head), ``lm_hits@k`` (the same candidates ranked by their mean
  token log-likelihood), ``pmi_hits@k`` (ranked by their pointwise mutual information with the conversation, per
  token), with ``persona_swaps`` the persona-use metrics (:mod:`persona.training.persona_use`), with a
  ``consistency_model`` the NLI consistency of the replies (:mod:`persona.training.consistency`), ``f1`` of generated
  replies (ParlAI's ConvAI2 normalisation), each with the number of turns behind it, and the model, data and
  decoding settings. Fractions are in [0, 1].
- ``generations.jsonl``: ``persona``, ``history``, ``prediction`` and ``gold`` of each generated turn.
- ``report.md``: the metrics and a sample of dialogs with their generated replies.

Under ``accelerate launch`` the turns are sharded over the processes and gathered.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import set_seed

from persona.configs import DataArguments, ModelArguments, PersonaTrainingArguments
from persona.data import prepare_corpus
from persona.data.layout import gold_reply
from persona.errors import ConfigError
from persona.metrics import f1_to_candidates, load_metric
from persona.model.decoding import DecodingSpeed, generate_replies
from persona.model.generation import DecodingArguments
from persona.model.loading import LoadedModel, load_for_inference, refuse_training_fields
from persona.training.consistency import consistency, load_judge
from persona.training.persona_drift import drift_questions, persona_drift
from persona.training.persona_use import persona_use
from persona.training.report import write_report
from persona.training.trainer import PersonaTrainer, metrics_from_scores

logger = logging.getLogger("persona")
PROMPTING = (
    "its own chat template: the persona sentences as the system message, the history as alternating user and "
    "assistant messages (the partner as the user), each candidate as the assistant's reply up to and including its "
    "end-of-turn token"
)


@dataclass
class EvalArguments:
    """Options of persona-eval besides the shared ones: the model and the revision (``ModelArguments``), the
    corpus (``DataArguments``), ``output_dir``, ``per_device_eval_batch_size``, ``forward_mode``,
    ``use_token_types`` and ``seed`` (``PersonaTrainingArguments``), the decoding (``DecodingArguments``)."""

    generation_batch_size: int = field(default=32, metadata={"help": "Turns per batch when generating replies."})
    hits_k: list[int] = field(default_factory=lambda: [1, 5, 10], metadata={"help": "The k of each reported hits@k."})
    pmi_weight: float | None = field(
        default=None,
        metadata={
            "help": "Also rank the candidates by the language model's pointwise mutual information with the "
            "conversation per token (pmi_hits@k): a candidate's mean token log-likelihood after the conversation "
            "minus this weight times its mean token log-likelihood after an empty one, at the cost of a forward pass "
            "of the candidates without their context. 0.5 ranked best for SmolLM2 in its chat template "
            "(docs/ablation.md); a model of the reference layout never sees an empty conversation in training, and "
            "the quickstart model ranks worse by it than by likelihood. Unset: no pmi_hits@k."
        },
    )
    persona_swaps: int = field(
        default=0,
        metadata={
            "help": "Persona use: also score each turn's gold reply after this many other personas of the whole "
            "split, not only of the max_eval_dialogs evaluated (9 is usual; 0: off), for persona_hits@1 (the own "
            "persona makes the gold reply likeliest; chance 1/(swaps+1)) and persona_gain (nats per token the own "
            "persona adds), by the head too where the model has one."
        },
    )
    consistency_model: str | None = field(
        default=None,
        metadata={
            "help": "An NLI model (Hub id or folder; any AutoModelForSequenceClassification with entailment, neutral "
            "and contradiction labels, e.g. an MNLI or Dialogue NLI model) that judges each generated reply against "
            "each persona sentence: consistency (the C-score, mean over replies of +1 entailed / 0 / -1 contradicted "
            "summed over the sentences) and contradiction_rate (replies contradicting a sentence). Unset: neither."
        },
    )
    contradiction_set: bool = field(
        default=False,
        metadata={
            "help": "The evaluated corpus is a contradiction set (every distractor contradicts the persona, as in "
            "persona/resources/contradictions/quickstart_valid.json): also report contradict@1, the share of turns "
            "whose top-ranked candidate contradicts the persona (1 - hits@1; lm_ and pmi_ alike), and with generated "
            "replies generated_right and generated_contradict, the shares nearer to the gold reply than to every "
            "contradicting candidate and nearer to one of those than to the gold reply."
        },
    )
    drift_questions: int = field(
        default=0,
        metadata={
            "help": "Persona drift, on a contradiction set: ask the first N of its questions at the first turn of a "
            "new conversation and again after six turns of small talk, every reply generated (8 replies a question), "
            "for drift_kept (the second answer names the value the first named) and drift_first_right "
            "(persona.training.persona_drift; drift.jsonl). 0: off."
        },
    )
    max_generation_turns: int | None = field(
        default=None, metadata={"help": "Generate (for F1) on the first N turns only; default all."}
    )
    report_samples: int = field(default=5, metadata={"help": "Dialogs shown in report.md."})

    def __post_init__(self):
        if self.contradiction_set and 1 not in self.hits_k:
            self.hits_k = [1, *self.hits_k]
        if self.drift_questions and not self.contradiction_set:
            raise ConfigError(
                "drift_questions needs the questions of a contradiction set",
                where="drift_questions",
                fix="set contradiction_set true with a contradiction set's dataset_path, or drift_questions 0.",
            )
        if self.persona_swaps < 0:
            raise ConfigError(
                f"{self.persona_swaps} is negative", where="persona_swaps", fix="give 0 (off) or more (9 is usual)."
            )
        if self.pmi_weight is not None and self.pmi_weight < 0:
            raise ConfigError(
                f"{self.pmi_weight} is negative",
                where="pmi_weight",
                fix="give a weight of 0 or more (0.5 for a chat model), or leave pmi_weight unset.",
            )


def ranking_metrics(
    loaded: LoadedModel, features, args: PersonaTrainingArguments, hits_k: list[int], pmi_weight: float | None = None
) -> dict:
    """Perplexity and hits@k over the split's candidates (ranked by PMI too with a ``pmi_weight``), through the
    Trainer (sharded and gathered)."""
    scores = PersonaTrainer(loaded, args, pmi_weight=pmi_weight).predict(features).predictions
    return metrics_from_scores(scores, args.lm_coef, args.mc_coef, ks=tuple(hits_k))


def generate_turns(
    loaded: LoadedModel, dialogs, args: EvalArguments, decoding: DecodingArguments
) -> tuple[list[dict], DecodingSpeed]:
    """A generated reply for each turn (the first ``max_generation_turns``), sharded over processes, in the model's
    layout (a prompted baseline through its chat template); each record says whether the reply ended by itself and
    its token count. With them, the speed: every process's reply tokens over the seconds until all were gathered."""
    started = time.perf_counter()
    turns = [
        {
            "persona": d["persona"],
            "history": t["history"],
            "gold": gold_reply(t["candidates"]),
            "candidates": t["candidates"],
        }
        for d in dialogs
        for t in d["turns"]
    ]
    turns = turns[: args.max_generation_turns]
    state = PartialState()
    loaded.model.to(state.device)
    with state.split_between_processes(turns) as shard:
        pairs = [(t["persona"], t["history"]) for t in shard]
        replies = generate_replies(
            loaded, pairs, decoding, batch_size=args.generation_batch_size, progress=state.is_main_process
        )
        records = [{**t, "prediction": r.text, "ended": r.ended, "tokens": r.tokens} for t, r in zip(shard, replies)]
    records = gather_object(records) if state.num_processes > 1 else records
    return records, DecodingSpeed(sum(r["tokens"] for r in records), time.perf_counter() - started)


def write_outputs(out: Path, results: dict, records: list[dict], samples: int, drifted: list[dict]) -> None:
    """``eval_results.json``, ``generations.jsonl``, ``report.md`` and, where persona drift was measured, its
    conversations as ``drift.jsonl`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_results.json").write_text(json.dumps(results, indent=2))
    if drifted:
        (out / "drift.jsonl").write_text("".join(json.dumps(record) + "\n" for record in drifted))
    with open(out / "generations.jsonl", "w") as handle:
        for record in records:
            fields = (
                "persona",
                "history",
                "prediction",
                "gold",
                "f1",
                "ended",
                "tokens",
                "contradicts",
                "nearest_contradiction",
            )
            handle.write(json.dumps({k: record[k] for k in fields if k in record}) + "\n")
    write_report(results, records, out / "report.md", samples=samples)
    hits = f"{results['hits@1']:.3f}" if "hits@1" in results else "(no head)"
    pmi_hits = f", pmi_hits@1 {results['pmi_hits@1']:.3f}" if "pmi_hits@1" in results else ""
    generated = (
        f"f1 {results['f1']:.3f} and {results['ended']:.2f} of replies ended by themselves over {len(records)} turns "
        f"({results['generation_speed']['tokens_per_s']:.1f} tokens/s)"
        if records
        else "no replies generated"
    )
    logger.info(
        "perplexity %.2f, hits@1 %s, lm_hits@1 %.3f%s over %d turns, %s; written to %s",
        results["perplexity"],
        hits,
        results["lm_hits@1"],
        pmi_hits,
        results["num_turns"]["hits"],
        generated,
        out,
    )


def _evaluated_split(loaded: LoadedModel, data_args: DataArguments) -> tuple:
    """The features, dialogs and ``{"split", "skipped"}`` of the evaluated split, as the model reads them, and the
    distinct personas of the whole split (before ``max_eval_dialogs``)."""
    if loaded.prompted:
        logger.info(
            "A prompted baseline: %s is evaluated through %s; it has no trained multiple-choice head, so hits@k is "
            "left out",
            loaded.name,
            PROMPTING,
        )
    data_args = dataclasses.replace(data_args, input_layout=loaded.layout.name)
    with PartialState().main_process_first():
        corpus = prepare_corpus(data_args, loaded.layout, max_positions=loaded.max_positions, roles=("eval",))
    return corpus.features["eval"], corpus.dialogs["eval"], corpus.stats["splits"]["eval"], corpus.personas["eval"]


def _contradictions(metrics: dict, head: bool) -> dict:
    """On a contradiction set, each ranking's ``contradict@1`` (the head's where it was trained): the turns whose top
    candidate is not the gold reply, every other candidate contradicting the persona (a tie with the gold reply
    counts as a contradiction)."""
    kinds = ("", "lm_", "pmi_") if head else ("lm_", "pmi_")
    return {f"{kind}contradict@1": 1 - metrics[f"{kind}hits@1"] for kind in kinds if f"{kind}hits@1" in metrics}


def generated_answers(records: list[dict], f1_metric) -> dict[str, float]:
    """On a contradiction set (the gold reply last among each turn's candidates, every other one contradicting the
    persona), by ``f1_metric`` (ConvAI2's unigram F1): ``generated_contradict``, the share of generated replies
    strictly nearer to a contradicting candidate than to the gold reply (each such record gets that candidate as
    ``nearest_contradiction``), and ``generated_right``, the share strictly nearer to the gold reply than to every
    contradicting one. A reply that names no value of the fact is as near to all: neither."""
    scores = f1_to_candidates(f1_metric, [r["prediction"] for r in records], [r["candidates"] for r in records])
    contradicting, right = 0, 0
    for record, own in zip(records, scores):
        nearest = max(range(len(own) - 1), key=own.__getitem__, default=None)
        if nearest is not None and own[nearest] > own[-1]:
            record["nearest_contradiction"] = record["candidates"][nearest]
            contradicting += 1
        right += nearest is None or own[-1] > own[nearest]
    return {"generated_contradict": contradicting / len(records), "generated_right": right / len(records)}


OPTIONAL_METRICS = (  # in the results where their option computed them
    "consistency",
    "contradiction_rate",
    "consistency_model",
    "generated_right",
    "generated_contradict",
    "drift_first_right",
    "drift_kept",
    "drift_changed",
    "drift_questions",
)


def _results(loaded, data_args, run_args, eval_args, decoding, metrics, f1, split, records, speed, recipe) -> dict:
    """``eval_results.json``: the metrics (a prompted baseline has no ``hits@k`` nor ``mc_loss``) and the settings."""
    head = not loaded.prompted
    return {
        "model": loaded.name,
        "dataset": data_args.dataset_path or "PersonaChat",
        "split": split["split"],
        **({} if head else {"prompted": PROMPTING}),
        "perplexity": metrics["perplexity"],
        **({f"hits@{k}": metrics[f"hits@{k}"] for k in eval_args.hits_k} if head else {}),
        **{f"lm_hits@{k}": metrics[f"lm_hits@{k}"] for k in eval_args.hits_k},
        **{f"pmi_hits@{k}": metrics[f"pmi_hits@{k}"] for k in eval_args.hits_k if f"pmi_hits@{k}" in metrics},
        **{name: value for name, value in metrics.items() if name.startswith("persona_")},
        **{name: metrics[name] for name in OPTIONAL_METRICS if name in metrics},
        **(_contradictions(metrics, head) if eval_args.contradiction_set else {}),
        **({} if eval_args.pmi_weight is None else {"pmi_weight": eval_args.pmi_weight}),
        **({"f1": f1, "ended": sum(r["ended"] for r in records) / len(records)} if records else {}),
        **({"generation_speed": {**dataclasses.asdict(speed), "tokens_per_s": speed.tokens_per_s}} if records else {}),
        "num_turns": {"perplexity": metrics["num_turns"], "hits": metrics["num_turns"], "f1": len(records)},
        "num_candidates": metrics["num_candidates"],
        "skipped": split["skipped"],
        "token_types": loaded.token_types,
        "input_layout": loaded.layout.name,
        "num_reply_tokens": metrics["num_reply_tokens"],
        "lm_loss": metrics["lm_loss"],
        **({"mc_loss": metrics["mc_loss"]} if head else {}),
        "decoding": dataclasses.asdict(decoding),
        "data": {
            k: v
            for k, v in dataclasses.asdict(data_args).items()
            if k not in ("dataset_cache", "preprocessing_num_workers")
        },
        "recipe": recipe,
    }


def evaluate_model(
    model_args: ModelArguments,
    data_args: DataArguments,
    run_args: PersonaTrainingArguments,
    eval_args: EvalArguments,
    decoding: DecodingArguments,
    recipe: dict,
) -> dict | None:
    """The whole run of ``persona-eval``: score the candidates, generate replies, write the results, generations and
    report into ``run_args.output_dir``. Returns the results on the main process (None on the others)."""
    refuse_training_fields(model_args, "persona-eval")
    judge = (
        load_judge(eval_args.consistency_model) if eval_args.consistency_model else None
    )  # a missing one fails early
    set_seed(run_args.seed)
    loaded = load_for_inference(model_args, run_args.use_token_types)
    run_args.use_token_types = loaded.token_types
    features, dialogs, split, pool = _evaluated_split(loaded, data_args)
    metrics = ranking_metrics(loaded, features, run_args, eval_args.hits_k, eval_args.pmi_weight)
    if eval_args.persona_swaps:
        longest, batch_size = data_args.input_length(loaded.max_positions), run_args.per_device_eval_batch_size
        metrics |= persona_use(
            loaded, dialogs, eval_args.persona_swaps, data_args.sampling_seed, longest, batch_size, pool
        )
    records, speed = generate_turns(loaded, dialogs, eval_args, decoding)
    f1 = {"f1": None, "f1_per_example": []}  # max_generation_turns 0: nothing generated, no F1
    f1_metric = load_metric("convai2_f1") if records or eval_args.drift_questions else None
    if records:
        f1 = f1_metric.compute(predictions=[r["prediction"] for r in records], references=[r["gold"] for r in records])
        if eval_args.contradiction_set:
            metrics |= generated_answers(records, f1_metric)
    for record, score in zip(records, f1["f1_per_example"]):
        record["f1"] = score
    drifted = []
    if eval_args.drift_questions:
        questions, history = drift_questions(dialogs, eval_args.drift_questions), data_args.max_history
        drift, drifted = persona_drift(
            loaded, questions, decoding, f1_metric, max_history=history, batch_size=eval_args.generation_batch_size
        )
        metrics |= drift
    state = PartialState()
    results = None
    if state.is_main_process:
        if judge is not None and records:
            metrics |= consistency(judge, records)
        results = _results(
            loaded, data_args, run_args, eval_args, decoding, metrics, f1["f1"], split, records, speed, recipe
        )
        write_outputs(Path(run_args.output_dir), results, records, eval_args.report_samples, drifted)
    state.wait_for_everyone()
    state.destroy_process_group()  # before the interpreter exits (see persona.training.fine_tune)
    return results
