"""persona-serve under load: requests/s and p50/p90 latency at 1, 4 and 16 concurrent clients, with batching and
with one-at-a-time generation, in the same run.

    python benchmarks/serve_load.py [--models quickstart smollm2] [--requests_per_client 4] [--max_tokens 20]

Each server runs in this process on a free 127.0.0.1 port (``max_batch_size`` 16, then 1); each client is a
thread that sends its requests one after the other through the API (a persona and a conversation of the
quickstart validation corpus, the reference's decoding: sampling, temperature 0.7, top-p 0.9, at most
``--max_tokens`` tokens). Models: the quickstart model (``runs/quickstart``: train it first), and SmolLM2-135M
from the shared GGUF, fine-tuned for ``--smollm2_steps`` updates by the offline recipe into
``runs/smollm2-serve`` the first time (persona-serve serves a model persona trained).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VALID_CONVERSATIONS = REPO / "persona" / "resources" / "quickstart" / "valid_conversations.jsonl"
CONCURRENCY = (1, 4, 16)


def smollm2_model(steps: int) -> Path:
    """A persona SmolLM2-135M: the offline recipe for ``steps`` updates (once; reused afterwards)."""
    folder = REPO / "runs" / "smollm2-serve"
    if not (folder / "model.safetensors").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "persona.commands.train",
                str(REPO / "recipes" / "smollm2-135m-offline" / "train.yaml"),
                "--max_steps",
                str(steps),
                "--max_eval_dialogs",
                "2",
                "--eval_num_candidates",
                "2",
                "--output_dir",
                str(folder),
            ],
            cwd=REPO,
            check=True,
        )
    return folder


def requests(count: int) -> list[list[dict]]:
    """``count`` chat-completions message lists: the bot's persona as the system message, the conversation so far."""
    from persona.data.chat_layout import chat_messages
    from persona.data.sources import read_corpus

    dialogs = read_corpus(str(VALID_CONVERSATIONS), bot_side="user2")
    return [
        chat_messages(d["persona"], t["history"]) for split in dialogs.values() for d in split for t in d["turns"]
    ][:count]


def load(url: str, clients: int, per_client: int, max_tokens: int) -> dict:
    """``clients`` threads sending ``per_client`` requests each: requests/s and latency percentiles (s)."""
    import httpx

    conversations = requests(clients * per_client)

    def client(index: int) -> list[float]:
        latencies = []
        with httpx.Client(timeout=600) as http:
            for messages in conversations[index * per_client : (index + 1) * per_client]:
                start = time.perf_counter()
                response = http.post(
                    f"{url}/v1/chat/completions", json={"messages": messages, "max_tokens": max_tokens}
                )
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [latency for done in pool.map(client, range(clients)) for latency in done]
    elapsed = time.perf_counter() - start
    deciles = statistics.quantiles(latencies, n=10) if len(latencies) > 1 else latencies * 9
    return {"requests_per_s": len(latencies) / elapsed, "p50": statistics.median(latencies), "p90": deciles[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["quickstart", "smollm2"], choices=["quickstart", "smollm2"])
    parser.add_argument("--requests_per_client", type=int, default=4)
    parser.add_argument("--max_tokens", type=int, default=20)
    parser.add_argument("--smollm2_steps", type=int, default=20)
    args = parser.parse_args()

    from persona.configs import DataArguments, ModelArguments
    from persona.model.generation import DecodingArguments
    from persona.serving.server import ServeArguments, free_port, running_server

    folders = {"quickstart": REPO / "runs" / "quickstart"}
    if "smollm2" in args.models:
        folders["smollm2"] = smollm2_model(args.smollm2_steps)
    print(f"{'model':12} {'clients':>8} {'generation':>14} {'requests/s':>11} {'p50 s':>8} {'p90 s':>8}")
    for name in args.models:
        if not (folders[name] / "config.json").exists():
            print(
                f"{name:12} skipped: no model in {folders[name]} (persona-train recipes/quickstart/train.yaml first)"
            )
            continue
        results = {}
        for mode, batch in (("batched", 16), ("one at a time", 1)):
            serve = ServeArguments(port=free_port(), max_batch_size=batch, max_queue=256)
            with running_server(
                ModelArguments(model_name_or_path=str(folders[name])), DataArguments(), serve, DecodingArguments()
            ) as (url, _):
                load(url, 1, 2, args.max_tokens)  # warm-up
                for clients in CONCURRENCY:
                    results[mode, clients] = load(url, clients, args.requests_per_client, args.max_tokens)
                    r = results[mode, clients]
                    print(
                        f"{name:12} {clients:8} {mode:>14} {r['requests_per_s']:11.2f} {r['p50']:8.3f} "
                        f"{r['p90']:8.3f}",
                        flush=True,
                    )
        batched, single = results["batched", 16], results["one at a time", 16]
        sequential_16 = 16 / results["one at a time", 1]["requests_per_s"]
        print(
            f"{name:12} at 16 clients: batching gives {batched['requests_per_s'] / single['requests_per_s']:.1f}x "
            f"the one-at-a-time throughput; "
            f"p90 {batched['p90']:.2f} s against {sequential_16:.2f} s for 16 sequential replies"
        )


if __name__ == "__main__":
    main()
