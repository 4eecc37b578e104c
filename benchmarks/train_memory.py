"""Peak memory and time per update of a CPU training run under each memory allocator, side by side.

    python benchmarks/train_memory.py [--recipe recipes/smollm2-135m-offline/train.yaml] [--max_steps 4]
                                      [--allocators glibc tcmalloc jemalloc]

Each allocator trains the recipe for ``--max_steps`` updates in a fresh process (``persona-train``'s own code), the
lean ones preloaded with ``LD_PRELOAD`` (Debian and Ubuntu: ``apt-get install libtcmalloc-minimal4 libjemalloc2``; an
absent one is named and left out). Printed per allocator: the peak RSS of the whole run (loading, preparing the
corpus when its cache lacks it, and the end-of-training check included), the peak while updating,
the seconds per update (the first left out: it warms up) and the training loss, which is the same computation
whatever the allocator.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = {"tcmalloc": "tcmalloc_minimal", "jemalloc": "jemalloc"}  # what LD_PRELOAD names, found by ctypes
PACKAGES = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}  # Debian's and Ubuntu's


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


def train(recipe: str, max_steps: int, output_dir: str) -> dict:
    """Train in this process, sampling its RSS 20 times a second; the figures of the run."""
    from transformers import TrainerCallback

    from persona.commands.train import main as train_main
    from persona.training import trainer as trainer_module

    updating, peak, step_ends = threading.Event(), [0], []

    def sample() -> None:
        while True:
            if updating.is_set():
                peak[0] = max(peak[0], _status_kb("VmRSS"))
            time.sleep(0.05)

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            updating.set()

        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            updating.clear()

    threading.Thread(target=sample, daemon=True).start()
    original_init = trainer_module.PersonaTrainer.__init__

    def with_steps(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Steps())

    trainer_module.PersonaTrainer.__init__ = with_steps
    code = train_main(
        [recipe, "--max_steps", str(max_steps), "--max_eval_dialogs", "1", "--output_dir", output_dir]
        + ["--logging_steps", str(max_steps), "--report_to", "none"]
    )
    if code:
        raise SystemExit(code)
    results = json.loads((Path(output_dir) / "train_results.json").read_text())
    intervals = [b - a for a, b in zip(step_ends, step_ends[1:])]
    return {
        "peak_rss_gb": _status_kb("VmHWM") * 1024 / 1e9,
        "updating_peak_rss_gb": peak[0] * 1024 / 1e9,
        "seconds_per_update": sum(intervals) / len(intervals) if intervals else float("nan"),
        "train_loss": results["train_loss"],
    }


def run(allocator: str, recipe: str, max_steps: int) -> dict:
    """One training run in a fresh process under ``allocator``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LD_PRELOAD": ""}
    if allocator != "glibc":
        env["LD_PRELOAD"] = ctypes.util.find_library(LIBRARIES[allocator])
    with tempfile.TemporaryDirectory(prefix="persona-train-memory-") as output_dir:
        output = subprocess.run(
            [sys.executable, __file__, "--child", recipe, str(max_steps), output_dir],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
        )
    if output.returncode:
        raise RuntimeError(output.stderr[-3000:])
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/smollm2-135m-offline/train.yaml")
    parser.add_argument("--max_steps", type=int, default=4, help="updates per run (at least 3: the first warms up)")
    parser.add_argument("--allocators", nargs="+", default=["glibc", "tcmalloc"], choices=["glibc", *LIBRARIES])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        recipe, max_steps, output_dir = args.child
        print(json.dumps(train(recipe, int(max_steps), output_dir)))
        return
    available = [a for a in args.allocators if a == "glibc" or ctypes.util.find_library(LIBRARIES[a])]
    for absent in sorted(set(args.allocators) - set(available)):
        print(f"{absent}: not installed, left out (apt-get install {PACKAGES[absent]})")
    results = {allocator: run(allocator, args.recipe, args.max_steps) for allocator in available}
    print(f"{args.recipe}, {args.max_steps} updates per run, each run alone in a fresh process")
    print(f"{'allocator':12}{'peak RSS GB':>14}{'updating GB':>14}{'s / update':>12}{'train loss':>14}")
    for allocator, result in results.items():
        print(
            f"{allocator:12}{result['peak_rss_gb']:14.2f}{result['updating_peak_rss_gb']:14.2f}"
            f"{result['seconds_per_update']:12.1f}{result['train_loss']:14.6f}"
        )
    if "glibc" in results:
        base = results["glibc"]
        for allocator, result in results.items():
            if allocator != "glibc":
                print(
                    f"{allocator} against glibc: peak RSS x{result['peak_rss_gb'] / base['peak_rss_gb']:.2f}, "
                    f"time per update x{result['seconds_per_update'] / base['seconds_per_update']:.2f}"
                )


if __name__ == "__main__":
    main()
