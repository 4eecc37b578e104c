"""Does persona turn a real pretrained model into a better persona bot? SmolLM2-135M-Instruct, offline, on this CPU.

    python benchmarks/smollm2_finetune.py [--max_steps 120] [--eval_dialogs 6] [--use_peft] [--token_types]

The model is the Q4_1 GGUF of ``../shared/models/smollm2-135m-instruct`` (de-quantized on load) and the
data the shared Synthetic-Persona-Chat validation CSV, split as ``recipes/smollm2-135m-offline/`` split
it: 100 dialogs (whole conversations) held out, the rest for training. Both rows come from
``persona-eval recipes/smollm2-135m-offline/eval.yaml`` on the same held-out turns (the first
``--eval_dialogs`` held-out dialogs, 20 candidates per turn):

- untrained: the model as published, a prompted baseline (persona-eval prompts it through its own chat
  template): candidates ranked by their mean log-likelihood as the assistant's reply (lm_hits@1), perplexity
  of the gold reply, F1 of its greedy reply;
- fine-tuned: ``persona-train recipes/smollm2-135m-offline/train.yaml`` for ``--max_steps`` updates of 8
  turns (the CPU budget), then persona-eval: hits@1 from the multiple-choice head and lm_hits@1 from the
  candidates' likelihood, perplexity, F1 of greedy replies.

Perplexities are over each prompt's own tokens (the chat template's, persona's layout), so they compare
loosely; hits@1 and F1 compare directly.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = REPO.parent / "shared" / "models" / "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPES = REPO / "recipes" / "smollm2-135m-offline"


def evaluated(model: list[str], dialogs: int, folder: Path) -> dict:
    """persona-eval's results for ``model`` (its command-line arguments) on the first ``dialogs`` held-out dialogs."""
    from persona.commands.eval import main as eval_main

    if (
        eval_main(
            [str(RECIPES / "eval.yaml"), *model, "--output_dir", str(folder), "--max_eval_dialogs", str(dialogs)]
        )
        != 0
    ):
        raise SystemExit("persona-eval failed")
    return json.loads((folder / "eval_results.json").read_text())


def row(results: dict, ranking: str) -> dict:
    """A table row: hits@1 by ``ranking`` (``hits@1``: the head; ``lm_hits@1``: the likelihood), perplexity, F1,
    turns."""
    return {
        "hits@1": results[ranking],
        "perplexity": results["perplexity"],
        "f1": results["f1"],
        "turns": results["num_turns"]["hits"],
    }


def fine_tuned(max_steps: int, use_peft: bool, token_types: bool, folder: Path) -> tuple[str, float]:
    """Train with the offline recipe for ``max_steps`` updates; the model folder and the training minutes."""
    from persona.commands.train import main as train_main

    started = time.perf_counter()
    train_args = [
        str(RECIPES / "train.yaml"),
        "--max_steps",
        str(max_steps),
        "--output_dir",
        str(folder),
        "--max_eval_dialogs",
        "1",
    ]
    if use_peft:
        train_args += ["--use_peft", "true", "--learning_rate", "5e-4"]
    if token_types:
        train_args += ["--use_token_types", "true"]
    if train_main(train_args) != 0:
        raise SystemExit("persona-train failed")
    return str(folder), (time.perf_counter() - started) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_steps", type=int, default=120, help="training updates of 8 turns (the CPU budget)")
    parser.add_argument("--eval_dialogs", type=int, default=6, help="held-out dialogs scored (20 candidates per turn)")
    parser.add_argument("--use_peft", action="store_true", help="LoRA instead of every weight")
    parser.add_argument(
        "--token_types", action="store_true", help="train with token types (the recipe trains without)"
    )
    args = parser.parse_args()
    os.chdir(REPO)  # the recipes' paths are relative to the repository
    if not (SMOLLM2 / GGUF).exists():
        raise SystemExit(f"{SMOLLM2 / GGUF} is absent (the shared folder beside the repository holds it)")
    with tempfile.TemporaryDirectory(prefix="smollm2-bench-") as folder:
        started = time.perf_counter()
        untrained = evaluated(
            ["--model_name_or_path", str(SMOLLM2), "--gguf_file", GGUF], args.eval_dialogs, Path(folder) / "untrained"
        )
        baseline_minutes = (time.perf_counter() - started) / 60
        model, minutes = fine_tuned(args.max_steps, args.use_peft, args.token_types, Path(folder) / "model")
        trained = evaluated(["--model_name_or_path", model], args.eval_dialogs, Path(folder) / "trained")
    print(
        f"\nSmolLM2-135M-Instruct (GGUF Q4_1, de-quantized), Synthetic-Persona-Chat valid CSV, "
        f"{trained['num_turns']['hits']} held-out turns x 20 candidates"
    )
    print(
        f"fine-tuning budget: {args.max_steps} updates x 8 turns = {args.max_steps * 8} training turns, "
        f"{minutes:.1f} min "
        f"({'LoRA' if args.use_peft else 'all weights'}, {'' if args.token_types else 'no '}token types); untrained "
        f"baseline scored in {baseline_minutes:.1f} min"
    )
    print(f"{'model':48}{'hits@1':>8}{'ppl':>9}{'F1':>8}{'turns':>7}")
    rows = (
        ("untrained (its chat template, log-likelihood)", row(untrained, "lm_hits@1")),
        ("fine-tuned (multiple-choice head)", row(trained, "hits@1")),
        ("fine-tuned (log-likelihood ranking)", row(trained, "lm_hits@1")),
    )
    for name, values in rows:
        print(f"{name:48}{values['hits@1']:8.3f}{values['perplexity']:9.2f}{values['f1']:8.3f}{values['turns']:7d}")
    for name, values in rows[1:]:
        print(
            f"hits@1 ratio, {name} / untrained: {values['hits@1'] / max(rows[0][1]['hits@1'], 1e-9):.2f}x (chance: "
            f"0.05)"
        )


if __name__ == "__main__":
    main()
