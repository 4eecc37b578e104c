"""What makes a fine-tuned SmolLM2-135M-Instruct a better persona bot than the same model prompted? An ablation.

    python benchmarks/ablation.py [--max_steps 40 | --budget_s 900] [--sft] [--eval_dialogs 14] [--generation_turns 60]
        [--variants NAME ...]

The model is the Q4_1 GGUF of ``../shared/models/smollm2-135m-instruct`` (de-quantized on load), the data the shared
Synthetic-Persona-Chat validation CSV, split as ``recipes/smollm2-135m-offline/`` splits it (100 dialogs, whole
conversations, held out). Each variant is ``persona-train recipes/smollm2-135m-offline/train.yaml`` with the
variant's overrides and ``--max_steps`` updates of 8 turns, in a fresh process (its wall time and peak RSS are
measured), then ``persona-eval recipes/smollm2-135m-offline/eval.yaml`` on the first ``--eval_dialogs`` held-out
dialogs (20 candidates per turn, greedy replies on the first ``--generation_turns`` turns). The first row is the
untrained model prompted through its own chat template on the same turns.

``--budget_s B`` compares the variants at equal minutes instead of equal updates, the budget users have: each trains
until B seconds of training (``--max_train_seconds``; a cheaper update buys more updates) at a constant learning rate
after the recipe's warmup (``constant_with_warmup``: no schedule then depends on an update count that differs from
row to row). ``--sft`` adds the peer a user would train instead, TRL's SFTTrainer on the same model, data and budget
(``benchmarks/vs_sft.py``; ``pip install -e ".[bench]"``), scored by persona-eval as a prompted model. Each row gives
its ``train_runtime`` (the training alone, from ``train_results.json``) and its updates. Every row is appended to
``--record`` (JSON lines) and the table is printed in Markdown. Run it alone: two heavy processes on 2 cores distort
the times.
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
    str(REPO.parent / "shared" / "models" / "smollm2-135m-instruct"),
    "--gguf_file",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
]
CHAT = ["--input_layout", "chat_template"]
NO_PRIOR = ["--likelihood_prior", "false", "--prior_pmi_weight", "0"]
MEAN_PRIOR = ["--likelihood_prior", "true", "--prior_pmi_weight", "0"]  # the prior of mean log-likelihoods
PRIOR = [*CHAT, *MEAN_PRIOR]
VARIANTS = {  # each a set of overrides of the recipe as written
    "the offline recipe as written": [],
    "reference layout": ["--input_layout", "reference", *NO_PRIOR],
    "reference layout + likelihood prior": ["--input_layout", "reference", *MEAN_PRIOR],
    "chat template": [*CHAT, *NO_PRIOR],
    "chat template + likelihood prior": PRIOR,
    "chat template + prior, 8 candidates": [*PRIOR, "--num_candidates", "8"],
    "chat template + prior, 16 candidates": [*PRIOR, "--num_candidates", "16"],
    "chat template + prior, 20 candidates (no checkpointing)": [
        *PRIOR,
        "--num_candidates",
        "20",
        "--gradient_checkpointing",
        "false",
    ],
    "chat template + prior, lm_coef 1": [*PRIOR, "--lm_coef", "1.0"],
    "chat template + prior, head lr 1e-3": [*PRIOR, "--head_learning_rate", "1e-3"],
    "chat template + prior, head lr 1e-2": [*PRIOR, "--head_learning_rate", "1e-2"],
    "chat template + prior, lr 2e-4": [*PRIOR, "--learning_rate", "2e-4"],
    "chat template + prior, LoRA (lr 5e-4)": [*PRIOR, "--use_peft", "true", "--learning_rate", "5e-4"],
    "chat template + PMI prior, weight 0.5": [*CHAT, "--likelihood_prior", "true", "--prior_pmi_weight", "0.5"],
    "the recipe + label history": ["--label_history", "true"],
    "the recipe + label history, 8 candidates": ["--label_history", "true", "--num_candidates", "8"],
    "the recipe + label history, 4 candidates": ["--label_history", "true", "--num_candidates", "4"],
    "the recipe + label history, 4 candidates, mean prior": [
        "--label_history",
        "true",
        "--num_candidates",
        "4",
        "--prior_pmi_weight",
        "0",
    ],
}
SFT = "TRL SFTTrainer (assistant-only loss), the same model, data and budget"
COLUMNS = ("hits@1", "lm_hits@1", "pmi_hits@1", "perplexity", "f1", "ended")
COSTS = ("train_runtime", "updates", "train_minutes", "train_peak_gb")


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


def budget(args: argparse.Namespace) -> list[str]:
    """The training length of every row: ``--budget_s`` seconds at a constant learning rate, else ``--max_steps``."""
    if args.budget_s is None:
        return ["--max_steps", str(args.max_steps)]
    return [
        "--max_train_seconds",
        str(args.budget_s),
        "--max_steps",
        "100000",
        "--lr_scheduler_type",
        "constant_with_warmup",
    ]


def train(name: str, folder: Path, args: argparse.Namespace) -> dict:
    """Train the variant ``name`` (or the SFT peer); its wall minutes, peak memory, training seconds and updates."""
    if name == SFT:
        command = [sys.executable, str(REPO / "benchmarks" / "vs_sft.py"), *budget(args), "--output_dir", str(folder)]
    else:
        command = [sys.executable, "-m", "persona.commands.train", str(RECIPES / "train.yaml"), *VARIANTS[name]]
        command += [*budget(args), "--output_dir", str(folder), "--max_eval_dialogs", "1"]
    seconds, peak = measured(command)
    results = json.loads((folder / "train_results.json").read_text())
    updates = results.get("updates") or json.loads((folder / "trainer_state.json").read_text())["global_step"]
    return {
        "train_minutes": round(seconds / 60, 2),
        "train_peak_gb": round(peak, 2),
        "train_runtime": round(float(results["train_runtime"]), 1),
        "updates": updates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--budget_s", type=float, help="Train every row for this many seconds instead (see above).")
    parser.add_argument("--sft", action="store_true", help="Add the TRL SFTTrainer peer's row.")
    parser.add_argument("--eval_dialogs", type=int, default=14)
    parser.add_argument("--generation_turns", type=int, default=60)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--no_baseline", action="store_true", help="Leave out the untrained model's row.")
    parser.add_argument("--record", default=str(REPO / "benchmarks" / "ablation.jsonl"))
    args = parser.parse_args()
    if not (REPO.parent / "shared" / "models").exists():
        sys.exit("../shared/models/smollm2-135m-instruct is absent: this benchmark needs the shared SmolLM2 GGUF.")
    rows = []
    with tempfile.TemporaryDirectory(prefix="persona-ablation-") as scratch:
        if not args.no_baseline:
            rows.append(
                {
                    "variant": "untrained, prompted through its chat template",
                    **evaluate(SMOLLM2, Path(scratch) / "base", args),
                }
            )
        for index, name in enumerate([*args.variants, *([SFT] if args.sft else [])]):
            folder = Path(scratch) / f"run{index}"
            cost = train(name, folder, args)
            rows.append(
                {
                    "variant": name,
                    **cost,
                    **evaluate(["--model_name_or_path", str(folder)], Path(scratch) / f"eval{index}", args),
                }
            )
            print(json.dumps({k: rows[-1].get(k) for k in ("variant", *COLUMNS, *COSTS)}), flush=True)
    with open(args.record, "a") as record:
        for row in rows:
            length = {"budget_s": args.budget_s} if args.budget_s is not None else {"max_steps": args.max_steps}
            record.write(json.dumps({**length, "eval_dialogs": args.eval_dialogs, **row}) + "\n")
    turns = rows[0]["num_turns"]
    length = f"{args.budget_s:g} s of training" if args.budget_s is not None else f"{args.max_steps} updates"
    print(f"\n{length}; {turns['hits']} held-out turns x 20 candidates (F1: {turns['f1']})\n")
    print(
        "| variant | hits@1 | lm_hits@1 | pmi_hits@1 | perplexity | F1 | ended | train_runtime s | updates "
        "| wall minutes | peak GB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cells = [f"{row[c]:.3f}" if c in row else "(no head)" if c == "hits@1" else "" for c in COLUMNS]
        print(f"| {row['variant']} | {' | '.join(cells)} | {' | '.join(str(row.get(c, '')) for c in COSTS)} |")


if __name__ == "__main__":
    main()
