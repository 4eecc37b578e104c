"""A decoding step of persona's own engine as persona-serve runs it (on a worker thread, the model in bfloat16):
torch's linear layers against layers packed once for oneDNN, and the model loaded on the main thread with all of
torch's threads against one (persona/serving/compute_threads.py), each arm in a fresh process, alternated round
by round on the same machine.

    python benchmarks/decode_step.py [--rows 1 16] [--rounds 3] [--steps 20]

For each arm and batch size: the median time of one decoding step of ``--rows`` rows (a quickstart persona and
conversation, about 60 prompt tokens a row, ``--steps`` steps after one warm-up step) and of reading their prompts.
The model is SmolLM2-135M fine-tuned by the offline recipe (``runs/smollm2-serve``, trained the first time by
``benchmarks/serve_load.py``'s ``smollm2_model``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time

ARMS = {  # name: (packed, loaded on one thread)
    "torch's linear, loaded on all threads": (False, False),
    "packed, loaded on all threads": (True, False),
    "packed, loaded on one thread (persona-serve)": (True, True),
}


def measure(packed: bool, one: bool, rows: list[int], steps: int) -> dict:
    """The arm's step and prompt-reading times (ms) for each row count, decoded on a worker thread."""
    import torch
    from serve_load import smollm2_model

    from persona.configs import ModelArguments
    from persona.model.generation import prompt_inputs
    from persona.model.loading import load_for_inference
    from persona.model.packed_linears import pack_linears
    from persona.model.running_batch import RunningBatch
    from persona.serving.compute_threads import one_thread

    folder = smollm2_model(20)
    with one_thread() if one else contextlib.nullcontext():
        loaded = load_for_inference(ModelArguments(model_name_or_path=str(folder)))  # float32: left unpacked
        loaded.model.to(torch.bfloat16)
        if packed:
            pack_linears(loaded.model)
    persona = ["i like cats.", "i work as a nurse.", "i live in paris."]
    prompt = prompt_inputs(persona, ["hello! how are you?", "fine. what do you do?", "i teach."], loaded, 20)
    times = {}

    def decode() -> None:
        with torch.inference_mode():
            for count in rows:
                batch = RunningBatch(loaded)
                started = time.perf_counter()
                batch.join([prompt] * count)
                read = time.perf_counter() - started
                batch.step([5] * count)
                started = time.perf_counter()
                for _ in range(steps):
                    batch.step([5] * count)
                times[count] = {"step": (time.perf_counter() - started) / steps * 1000, "read": read * 1000}

    worker = threading.Thread(target=decode)
    worker.start()
    worker.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # a child process measuring one arm
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(measure(*ARMS[args.arm], args.rows, args.steps)))
        return
    runs = {arm: [] for arm in ARMS}
    for round_ in range(args.rounds):
        for arm in ARMS:
            options = ["--rows", *map(str, args.rows), "--steps", str(args.steps), "--arm", arm]
            child = subprocess.run([sys.executable, __file__, *options], capture_output=True, text=True, check=True)
            runs[arm].append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}: {arm} done", file=sys.stderr)
    print(f"{'arm':46} {'rows':>4} {'step ms':>8} {'prompts ms':>10}")
    medians = {
        (arm, count): [statistics.median(r[count][part] for r in results) for part in ("step", "read")]
        for arm, results in runs.items()
        for count in map(str, args.rows)
    }
    first = next(iter(ARMS))
    for (arm, count), (step, read) in medians.items():
        speed = medians[first, count][0] / step
        print(f"{arm:46} {count:>4} {step:8.1f} {read:10.0f}   step {speed:.2f}x the first arm's speed")


if __name__ == "__main__":
    main()
