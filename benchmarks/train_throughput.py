"""Training throughput and peak memory of the packed fast path against the classic path, side by side.

    python benchmarks/train_throughput.py [--steps 16] [--accumulation 8] [--eval_batches 8] [--models NAME ...]
                                          [--device cuda] [--bf16] [--batch_sizes 8 32]

For each model (the quickstart model; a 2-layer 128-wide GPT-2 with GPT-2's 50k vocabulary; a
GPT-2-small-sized model, these three with random weights; SmolLM2-135M from the shared GGUF, any causal
LM's path), the reference's settings (4 candidates, max_history 2), it times
forward+backward passes of each path on the same batches, with an optimizer update every
``--accumulation`` batches (the reference's gradient_accumulation_steps, 8), after one untimed update (a
fresh process runs its first steps several times slower while the allocator and the optimizer state
grow), and prints examples/s and peak RSS; then hits@1 scoring over 20 candidates (no gradients) of each
path, after two untimed batches. Each measurement runs in a fresh process so that one path's peak memory
does not hide the other's. ``--device cuda`` runs on a GPU (peak GPU memory instead of RSS), ``--bf16``
under bf16 autocast, ``--batch_sizes`` replaces each model's own batch size by each of the sizes given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "persona" / "resources" / "quickstart"
SHARED = REPO.parent / "shared"
GPT2_TOKENIZER = SHARED / "tokenizers" / "gpt2"
SMOLLM2_GGUF = SHARED / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gpt2(tokenizer: Path, **config) -> dict:
    """ModelArguments of a random-weights GPT-2 of ``config`` with ``tokenizer``."""
    return {"model_config": json.dumps({"model_type": "gpt2", **config}), "tokenizer_name_or_path": str(tokenizer)}


# name: (ModelArguments fields, the file they need, per-device batch size)
MODELS = {
    "quickstart (2x128, 0.7k vocab)": (
        _gpt2(QUICKSTART / "tokenizer", n_layer=2, n_embd=128, n_head=4, n_positions=256),
        QUICKSTART,
        4,
    ),
    "2x128, GPT-2 vocab": (
        _gpt2(GPT2_TOKENIZER, n_layer=2, n_embd=128, n_head=4, n_positions=1024),
        GPT2_TOKENIZER,
        4,
    ),
    "GPT-2 small size (12x768)": (
        _gpt2(GPT2_TOKENIZER, n_layer=12, n_embd=768, n_head=12, n_positions=1024),
        GPT2_TOKENIZER,
        2,
    ),
    "SmolLM2-135M (Llama, GGUF)": (
        {"model_name_or_path": str(SMOLLM2_GGUF.parent), "gguf_file": SMOLLM2_GGUF.name},
        SMOLLM2_GGUF,
        2,
    ),
}


def measure(
    model_fields: dict,
    batch_size: int,
    mode: str,
    steps: int,
    accumulation: int,
    candidates: int,
    train: bool,
    device: str,
    bf16: bool,
) -> dict:
    """One path in this process: examples/s over ``steps`` batches after one untimed update (training; two
    untimed batches for scoring), an optimizer update every ``accumulation`` batches, and peak memory (RSS on
    the CPU, allocated GPU memory on CUDA)."""
    import resource

    import torch

    from persona.configs import DataArguments, ModelArguments
    from persona.data import prepare_corpus
    from persona.model.dual_heads import choose_dual_path, collator_for
    from persona.model.loading import load_for_training
    from persona.training.trainer import dual_loss

    torch.manual_seed(0)
    loaded = load_for_training(ModelArguments(**model_fields))
    model = loaded.model
    model.to(device)
    role = "train" if train else "eval"
    data = DataArguments(
        dataset_path=str(QUICKSTART),
        dataset_cache=str(REPO / "dataset_cache"),
        num_candidates=candidates,
        eval_num_candidates=candidates,
        max_history=2,
    )
    features = prepare_corpus(data, loaded.layout, max_positions=loaded.max_positions, roles=(role,)).features[role]
    path = choose_dual_path(model, mode)
    collator = collator_for(path, loaded.ids)
    warmup = accumulation if train else 2
    batches = [
        collator([features[i] for i in range(s * batch_size, (s + 1) * batch_size)]) for s in range(warmup + steps)
    ]
    batches = [{name: tensor.to(device) for name, tensor in batch.items()} for batch in batches]
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train(train)
    start = None
    for step, batch in enumerate(batches):
        if step == warmup:
            synchronize()
            start = time.perf_counter()
        with torch.set_grad_enabled(train), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            output = model(**batch, dual_path=path)
            loss, _, _ = dual_loss(output, batch["mc_labels"], 1.0, 1.0)
            if train:
                (loss / accumulation).backward()
                if (step + 1) % accumulation == 0:
                    optimizer.step()
                    optimizer.zero_grad()
    synchronize()
    elapsed = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated()
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {"examples_per_s": steps * batch_size / elapsed, "peak_memory_gb": peak / 1e9}


def run_child(args: list[str]) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if output.returncode:
        raise RuntimeError(output.stderr[-2000:])
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16, help="timed training batches")
    parser.add_argument("--accumulation", type=int, default=8, help="batches per optimizer update (the reference's 8)")
    parser.add_argument("--eval_batches", type=int, default=8, help="timed scoring batches")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=list(MODELS),
        metavar="NAME",
        help=f"which models (default all: {', '.join(MODELS)})",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument(
        "--batch_sizes", nargs="+", type=int, help="per-device batch sizes to measure (default: each model's own)"
    )
    parser.add_argument("--child", nargs="*")
    args = parser.parse_args()
    if args.child is not None:
        name, mode, steps, accumulation, candidates, train, batch = args.child
        measured = measure(
            MODELS[name][0],
            int(batch),
            mode,
            int(steps),
            int(accumulation),
            int(candidates),
            train == "train",
            args.device,
            args.bf16,
        )
        print(json.dumps(measured))
        return
    memory = "peak GPU memory GB" if args.device.startswith("cuda") else "peak RSS GB"
    print(f"device {args.device}{', bf16 autocast' if args.bf16 else ''}")
    print(f"{'model':32} {'what':40} {'classic':>16} {'packed':>16} {'speed-up':>9}")
    for name in args.models:
        needed = MODELS[name][1]
        if not needed.exists():
            print(f"{name:32} skipped: {needed} is absent")
            continue
        for batch in args.batch_sizes or [MODELS[name][2]]:
            for what, candidates, steps, train in (
                ("train, 4 candidates", 4, args.steps, "train"),
                ("hits@1 scoring, 20 candidates", 20, args.eval_batches, "eval"),
            ):
                child = [str(steps), str(args.accumulation), str(candidates), train, str(batch)]
                options = ["--device", args.device, *(["--bf16"] if args.bf16 else [])]
                results = {
                    mode: run_child([*options, "--child", name, mode, *child]) for mode in ("classic", "packed")
                }
                c, f = results["classic"], results["packed"]
                label = f"{what}, batch {batch} ex/s"
                print(
                    f"{name:32} {label:40} {c['examples_per_s']:16.2f} {f['examples_per_s']:16.2f} "
                    f"{f['examples_per_s'] / c['examples_per_s']:8.1f}x"
                )
                print(f"{'':32} {'  ' + memory:40} {c['peak_memory_gb']:16.2f} {f['peak_memory_gb']:16.2f}")


if __name__ == "__main__":
    main()
