"""Reply latency of a trained persona bot on this machine, as persona-chat produces replies.

    python benchmarks/chat_latency.py [--model_name_or_path runs/tiny-gpt2] [--requests 40]

Train the tiny GPT-2 first (``persona-train recipes/tiny-gpt2/train.yaml``). The requests are
turns of the quickstart validation conversations (a persona and the last ``2*max_history+1``
utterances). Each reply goes through ``persona.commands.chat.Bot.reply``, one at a time as in the prompt loop,
with the reference's decoding (sampling: temperature 0.7, top-p 0.9, at most 20 tokens) and greedily. It
prints the model's load time, then the median and 90th percentile of the reply latency and the reply
tokens per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VALID_CONVERSATIONS = REPO / "persona" / "resources" / "quickstart" / "valid_conversations.jsonl"


def requests_from(corpus: Path, count: int, max_history: int) -> list[tuple[list[str], list[str]]]:
    """``count`` (persona, history) pairs of the corpus's conversations: the bot (user 2) about to answer, turn after
    turn."""
    from persona.data.layout import history_window
    from persona.data.sources import read_corpus

    dialogs = [dialog for split in read_corpus(str(corpus), bot_side="user2").values() for dialog in split]
    return [(d["persona"], history_window(t["history"], max_history)) for d in dialogs for t in d["turns"]][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=str(REPO / "runs" / "tiny-gpt2"))
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max_history", type=int, default=2)
    args = parser.parse_args()
    if not (Path(args.model_name_or_path) / "config.json").exists():
        sys.exit(
            f"No trained model in {args.model_name_or_path}: run `persona-train recipes/tiny-gpt2/train.yaml` first."
        )

    import torch
    from transformers import set_seed

    from persona.configs import ModelArguments
    from persona.model.decoding import Bot
    from persona.model.generation import DecodingArguments
    from persona.model.loading import load_trained

    started = time.perf_counter()
    loaded = load_trained(ModelArguments(model_name_or_path=args.model_name_or_path))
    model = loaded.model
    load_seconds = time.perf_counter() - started
    requests = requests_from(VALID_CONVERSATIONS, args.requests + 1, args.max_history)
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"model: {args.model_name_or_path} ({parameters / 1e6:.1f} M parameters), loaded in {load_seconds:.2f} s; "
        f"torch threads: {torch.get_num_threads()}"
    )
    print(f"{len(requests) - 1} requests, one at a time (the first, a warm-up, is not counted)")
    print(f"{'decoding':12}{'median ms':>12}{'p90 ms':>10}{'tokens/s':>10}{'mean tokens':>13}")
    for name, decoding in (("sampling", DecodingArguments()), ("greedy", DecodingArguments(do_sample=False))):
        set_seed(0)
        bot = Bot(loaded, decoding, args.max_history)
        latencies, tokens = [], []
        for persona, history in requests:
            start = time.perf_counter()
            reply = bot.reply(persona, history)
            latencies.append(time.perf_counter() - start)
            tokens.append(len(loaded.layout.encode([reply])[0]) + 1)  # and its <eos>
        latencies, tokens = latencies[1:], tokens[1:]
        p90 = statistics.quantiles(latencies, n=10)[-1]
        print(
            f"{name:12}{statistics.median(latencies) * 1e3:12.1f}{p90 * 1e3:10.1f}"
            f"{sum(tokens) / sum(latencies):10.0f}{statistics.mean(tokens):13.1f}"
        )


if __name__ == "__main__":
    main()
