"""Does persona turn a real pretrained model into a better persona bot? SmolLM2-135M-Instruct, offline, on this CPU.

    python benchmarks/smollm2_finetune.py [--max_steps 120] [--eval_dialogs 6] [--use_peft] [--token_types]

The model is the Q4_1 GGUF of ``../shared/models/smollm2-135m-instruct`` (de-quantized on load) and the
data the shared Synthetic-Persona-Chat validation CSV, split as ``recipes/smollm2-135m-offline/`` split
it: 100 dialogs (whole conversations) held out, the rest for training. Two rows, on the same held-out
turns (the first ``--eval_dialogs`` held-out dialogs, 20 candidates per turn):

- untrained: the model as published, prompted with its own chat template (system: the persona; user and
  assistant turns); candidates ranked by their log-likelihood as the assistant's reply; perplexity of
  the gold reply; F1 of its greedy reply;
- fine-tuned: ``persona-train recipes/smollm2-135m-offline/train.yaml`` for ``--max_steps`` updates of 8
  turns (the CPU budget), then ``persona-eval recipes/smollm2-135m-offline/eval.yaml``: hits@1 from the
  multiple-choice head, perplexity, F1 of greedy replies; and hits@1 when the fine-tuned model ranks
  the candidates by their log-likelihood as the untrained one does.

Perplexities are over each prompt's own tokens (the chat template's, persona's layout), so they compare
loosely; hits@1 and F1 compare directly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = REPO.parent / "shared" / "models" / "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPES = REPO / "recipes" / "smollm2-135m-offline"


def held_out_dialogs(count: int) -> list[dict]:
    """The first ``count`` held-out dialogs of the offline recipes' split, as persona-eval reads them
    (the same distractors: 20 candidates per turn; history cut to ``max_history``)."""
    from persona.cli import parse_recipe
    from persona.configs import DataArguments, ModelArguments, PersonaTrainingArguments
    from persona.data.prepare import read_splits
    from persona.data.skips import SkipLog
    from persona.data.sources import resolve
    from persona.eval import EvalArguments
    from persona.generation import DecodingArguments

    (data,), _ = parse_recipe([str(RECIPES / "eval.yaml")], (DataArguments,), ignored=(ModelArguments, PersonaTrainingArguments, EvalArguments, DecodingArguments))
    data.max_eval_dialogs = count
    return read_splits(data, ("eval",), resolve(data.dataset_path, data.dataset_cache), None, SkipLog())[0]["eval"]


def chat_template_baseline(dialogs: list[dict]) -> dict:
    """hits@1 (log-likelihood ranking), perplexity and F1 of the untrained model through its own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona.metrics import load_metric

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2, gguf_file=GGUF).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    hits, nll, tokens, predictions, references = 0, 0.0, 0, [], []
    with torch.no_grad():
        for dialog in dialogs:
            for turn in dialog["turns"]:
                roles = ["user" if (len(turn["history"]) - i) % 2 else "assistant" for i in range(len(turn["history"]))]
                messages = [{"role": "system", "content": " ".join(dialog["persona"])}]
                messages += [{"role": r, "content": u} for r, u in zip(roles, turn["history"])]
                prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
                candidates = [tokenizer(c, add_special_tokens=False)["input_ids"] + [end] for c in turn["candidates"]]
                scores, gold_nll = _log_likelihoods(model, prompt, candidates)
                hits += _gold_wins(scores)
                nll, tokens = nll + gold_nll, tokens + len(candidates[-1])
                output = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=end, pad_token_id=end)
                predictions.append(tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True).strip())
                references.append(turn["candidates"][-1])
    turns = len(predictions)
    f1 = load_metric("convai2_f1").compute(predictions=predictions, references=references)["f1"]
    return {"hits@1": hits / turns, "perplexity": math.exp(nll / tokens), "f1": f1, "turns": turns}


def _gold_wins(scores: list[float]) -> int:
    """1 when the gold candidate (last) scores highest, else 0."""
    return int(max(range(len(scores)), key=scores.__getitem__) == len(scores) - 1)


def _log_likelihoods(model, prompt, candidates: list[list[int]], types: dict | None = None) -> tuple[list[float], float]:
    """Each candidate's summed log-probability after ``prompt`` (the prompt's cache shared), and the last one's NLL.

    ``types``: for a persona model, ``{"prompt": the prompt's token types, "reply": the replies' type}``."""
    import torch

    prefix = model(input_ids=prompt, use_cache=True, **({"token_type_ids": types["prompt"]} if types else {}))
    cache = prefix.cache
    cache.batch_repeat_interleave(len(candidates))
    width = max(map(len, candidates))
    ids = torch.zeros(len(candidates), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, candidate in enumerate(candidates):
        ids[row, : len(candidate)], mask[row, : len(candidate)] = torch.tensor(candidate), 1
    start = prompt.shape[1]
    logits = model(
        input_ids=ids,
        attention_mask=torch.cat([torch.ones(len(candidates), start, dtype=torch.long), mask], dim=1),
        position_ids=start + torch.arange(width).expand(len(candidates), -1),
        cache=cache,
        **({"token_type_ids": torch.full_like(ids, types["reply"])} if types else {}),
    ).logits
    first = prefix.logits[:, -1:].expand(len(candidates), 1, -1)  # predicts each candidate's first token
    log_probs = torch.cat([first, logits[:, :-1]], dim=1).log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1) * mask
    sums = log_probs.sum(-1)
    return sums.tolist(), -float(sums[-1])


def fine_tuned(max_steps: int, dialogs: list[dict], use_peft: bool, token_types: bool, folder: Path) -> tuple[dict, dict, float]:
    """Train with the offline recipe for ``max_steps``, evaluate with its eval recipe on as many held-out dialogs
    as ``dialogs`` holds: the multiple-choice head's row, the likelihood ranking's row (persona-eval's lm_hits@1)
    and the training minutes."""
    from persona.eval import main as eval_main
    from persona.train import main as train_main

    model_dir, eval_dir = folder / "model", folder / "eval"
    started = time.perf_counter()
    train_args = [str(RECIPES / "train.yaml"), "--max_steps", str(max_steps), "--output_dir", str(model_dir), "--max_eval_dialogs", "1"]
    if use_peft:
        train_args += ["--use_peft", "true", "--learning_rate", "5e-4"]
    if token_types:
        train_args += ["--use_token_types", "true"]
    if train_main(train_args) != 0:
        raise SystemExit("persona-train failed")
    minutes = (time.perf_counter() - started) / 60
    eval_args = [str(RECIPES / "eval.yaml"), "--model_name_or_path", str(model_dir), "--output_dir", str(eval_dir), "--max_eval_dialogs", str(len(dialogs))]
    if eval_main(eval_args) != 0:
        raise SystemExit("persona-eval failed")
    results = json.loads((eval_dir / "eval_results.json").read_text())
    row = {"hits@1": results["hits@1"], "perplexity": results["perplexity"], "f1": results["f1"], "turns": results["num_turns"]["hits"]}
    return row, {**row, "hits@1": results["lm_hits@1"]}, minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_steps", type=int, default=120, help="training updates of 8 turns (the CPU budget)")
    parser.add_argument("--eval_dialogs", type=int, default=6, help="held-out dialogs scored (20 candidates per turn)")
    parser.add_argument("--use_peft", action="store_true", help="LoRA instead of every weight")
    parser.add_argument("--token_types", action="store_true", help="train with token types (the recipe trains without)")
    args = parser.parse_args()
    os.chdir(REPO)  # the recipes' paths are relative to the repository
    if not (SMOLLM2 / GGUF).exists():
        raise SystemExit(f"{SMOLLM2 / GGUF} is absent (the shared folder beside the repository holds it)")
    dialogs = held_out_dialogs(args.eval_dialogs)
    started = time.perf_counter()
    untrained = chat_template_baseline(dialogs)
    baseline_minutes = (time.perf_counter() - started) / 60
    with tempfile.TemporaryDirectory(prefix="smollm2-bench-") as folder:
        trained, trained_likelihood, minutes = fine_tuned(args.max_steps, dialogs, args.use_peft, args.token_types, Path(folder))
    print(f"\nSmolLM2-135M-Instruct (GGUF Q4_1, de-quantized), Synthetic-Persona-Chat valid CSV, {untrained['turns']} held-out turns x 20 candidates")
    print(f"fine-tuning budget: {args.max_steps} updates x 8 turns = {args.max_steps * 8} training turns, {minutes:.1f} min "
          f"({'LoRA' if args.use_peft else 'all weights'}, {'' if args.token_types else 'no '}token types); untrained baseline scored in {baseline_minutes:.1f} min")
    print(f"{'model':48}{'hits@1':>8}{'ppl':>9}{'F1':>8}{'turns':>7}")
    rows = (
        ("untrained (its chat template, log-likelihood)", untrained),
        ("fine-tuned (multiple-choice head)", trained),
        ("fine-tuned (log-likelihood ranking)", trained_likelihood),
    )
    for name, row in rows:
        print(f"{name:48}{row['hits@1']:8.3f}{row['perplexity']:9.2f}{row['f1']:8.3f}{row['turns']:7d}")
    for name, row in rows[1:]:
        print(f"hits@1 ratio, {name} / untrained: {row['hits@1'] / max(untrained['hits@1'], 1e-9):.2f}x (chance: 0.05)")


if __name__ == "__main__":
    main()
