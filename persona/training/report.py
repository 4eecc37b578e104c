"""``report.md``: the evaluation metrics and a readable sample of dialogs, written for a person."""

from __future__ import annotations

from pathlib import Path

from persona.data.readers import SILENCE
from persona.metrics import metric_definition
from persona.model.decoding import DecodingSpeed


def metrics_table(results: dict) -> list[str]:
    """The metrics as Markdown table rows, each with its number of turns and definition."""
    turns = results["num_turns"]
    rows = ["| metric | value | turns | definition |", "| --- | --- | --- | --- |"]
    rows.append(
        f"| perplexity | {results['perplexity']:.2f} | {turns['perplexity']} | {metric_definition('perplexity')} |"
    )
    ranked = ("hits@", "lm_hits@", "pmi_hits@", "contradict@", "lm_contradict@", "pmi_contradict@")
    for key in [k for k in results if k.startswith(ranked)]:
        rows.append(
            f"| {key} | {results[key]:.3f} | {turns['hits']} | {metric_definition(key)} "
            f"({results['num_candidates']:g} candidates per turn) |"
        )
    for key in ("persona_hits@1", "persona_gain", "persona_mc_hits@1", "persona_mc_gain"):
        if key in results:
            rows.append(
                f"| {key} | {results[key]:.3f} | {results['persona_num_turns']} | {metric_definition(key)} "
                f"({results['persona_swaps']} other personas per turn) |"
            )
    for key in ("consistency", "contradiction_rate"):
        if key in results:
            rows.append(
                f"| {key} | {results[key]:.3f} | {turns['f1']} | {metric_definition(key)} (judged by "
                f"`{results['consistency_model']}`) |"
            )
    for key in ("generated_right", "generated_contradict"):
        if key in results:
            rows.append(f"| {key} | {results[key]:.3f} | {turns['f1']} | {metric_definition(key)} |")
    for key in ("drift_first_right", "drift_kept", "drift_changed"):
        if key in results:
            rows.append(f"| {key} | {results[key]:.3f} | {results['drift_questions']} | {metric_definition(key)} |")
    if "f1" in results:
        rows.append(f"| F1 | {results['f1']:.3f} | {turns['f1']} | {metric_definition('f1')} |")
    if "ended" in results:
        rows.append(f"| ended | {results['ended']:.3f} | {turns['f1']} | {metric_definition('ended')} |")
    return rows


def _speed(results: dict) -> str:
    """The generation's speed as a sentence (nothing where no reply was generated)."""
    speed = results.get("generation_speed")
    if not speed:
        return ""
    return f" {DecodingSpeed(speed['tokens'], speed['seconds'])} on the machine that ran it."


def write_report(results: dict, records: list[dict], path: Path, samples: int = 5) -> None:
    """Write the metrics table, the settings and ``samples`` dialogs with their generated replies."""
    decoding = results["decoding"]
    mode = "sampling" if decoding["do_sample"] else "greedy"
    lines = [
        f"# Evaluation of `{results['model']}`",
        "",
        f"Data: `{results['dataset']}`, split `{results['split']}`. Replies decoded by {mode}, at most "
        f"{decoding['max_length']} tokens.{_speed(results)}",
        "",
        *metrics_table(results),
        "",
        "## Sample dialogs",
    ]
    for record in records[:samples]:
        lines += ["", "**Persona:** " + " ".join(record["persona"]), ""]
        lines += [f"> {utterance}" for utterance in record["history"] if utterance != SILENCE] or [
            "> (the bot opens the conversation)"
        ]
        lines += ["", f"- generated: {record['prediction']}", f"- gold: {record['gold']}", f"- F1: {record['f1']:.2f}"]
    path.write_text("\n".join(lines) + "\n")
