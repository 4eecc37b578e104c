"""Preparation of a PersonaChat-scale corpus: cold time, peak RSS, cache size, warm load time.

    python benchmarks/prepare.py [--dialogs 17878] [--num_candidates 2] [--workers 2] [--corpus FILE]

Without ``--corpus`` it writes (once, into ``benchmarks/.corpus/``) a synthetic corpus in the JSON
layout of transfer-learning-conv-ai with PersonaChat's shape: 17,878 training dialogs of 6 to 9 turns
(about 131k turns), 20 candidates per turn (19 utterances of other dialogs and the gold reply), whole
histories, personas of 4 or 5 sentences, English words of GPT-2's vocabulary. It then prepares the
training split with GPT-2's tokenizer (``../shared/tokenizers/gpt2``) at the reference's settings
(``max_history 2``, ``num_candidates`` 2 by default), first into an empty cache (cold: reading,
distractors, tokenization, Arrow), then again from the cache (warm). Each run is a fresh process;
the peak RSS is the largest of the process and its ``datasets.map`` workers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_GPT2_TOKENIZER = REPO.parent / "shared" / "tokenizers" / "gpt2"
CORPUS_DIR = Path(__file__).resolve().parent / ".corpus"


def english_words(tokenizer_path: Path, count: int = 3000) -> list[str]:
    """The ``count`` lowest-ranked whole lower-case words of a byte-level BPE vocabulary (``Ġword``)."""
    vocab = json.loads((tokenizer_path / "vocab.json").read_text())
    words = sorted(
        (rank, token[1:])
        for token, rank in vocab.items()
        if token.startswith("\u0120") and token[1:].isalpha() and token[1:].islower() and len(token) > 2
    )
    return [word for _, word in words[:count]]


def sentence(rng: random.Random, words: list[str], low: int, high: int) -> str:
    """A lower-case sentence of ``low`` to ``high`` words, ending with a full stop or a question mark."""
    body = " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))
    return body + rng.choice((" .", " ?", " !", " ."))


def write_corpus(path: Path, dialogs: int, tokenizer_path: Path, seed: int = 0) -> None:
    """A synthetic corpus of PersonaChat's shape in the reference's JSON layout (``{"train": [...], "valid":
    [...]}``)."""
    rng = random.Random(seed)
    words = english_words(tokenizer_path)
    conversations = [[sentence(rng, words, 5, 14) for _ in range(2 * rng.randint(6, 9))] for _ in range(dialogs)]
    pool = [(d, u) for d, conversation in enumerate(conversations) for u in conversation]

    def dialog(index: int, conversation: list[str]) -> dict:
        utterances = []
        for turn in range(len(conversation) // 2):
            distractors = []
            while len(distractors) < 19:
                owner, utterance = rng.choice(pool)
                if owner != index:
                    distractors.append(utterance)
            utterances.append(
                {"history": conversation[: 2 * turn + 1], "candidates": [*distractors, conversation[2 * turn + 1]]}
            )
        return {
            "personality": [sentence(rng, words, 4, 9) for _ in range(rng.randint(4, 5))],
            "utterances": utterances,
        }

    corpus = {"train": [dialog(i, c) for i, c in enumerate(conversations)], "valid": []}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(corpus))
    partial.replace(path)


def prepare(corpus: str, cache: str, num_candidates: int, workers: int) -> dict:
    """Prepare the training split in this process; its time, statistics and peak RSS (workers included)."""
    start = time.perf_counter()
    from transformers import AutoTokenizer

    from persona.configs import DataArguments
    from persona.data import prepare_corpus
    from persona.data.special_tokens import add_special_tokens

    imported = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(SHARED_GPT2_TOKENIZER))
    add_special_tokens(tokenizer)
    data = DataArguments(
        dataset_path=corpus,
        dataset_cache=cache,
        num_candidates=num_candidates,
        max_history=2,
        preprocessing_num_workers=workers,
        validation_split_size=0,
    )
    prepared = prepare_corpus(data, tokenizer, max_length=1024, roles=("train",))
    done = time.perf_counter()
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) * 1024
    return {
        "seconds": done - imported,
        "import_seconds": imported - start,
        "peak_rss_gb": peak / 1e9,
        "stats": prepared.stats["splits"]["train"],
    }


def run_child(*args: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if output.returncode:
        raise RuntimeError(output.stderr[-3000:])
    return json.loads(output.stdout.strip().splitlines()[-1])


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogs", type=int, default=17878, help="training dialogs of the synthetic corpus")
    parser.add_argument("--num_candidates", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="preprocessing_num_workers")
    parser.add_argument("--corpus", help="a corpus of your own instead of the synthetic one (any accepted layout)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        corpus, cache, candidates, workers = args.child
        print(json.dumps(prepare(corpus, cache, int(candidates), int(workers))))
        return
    if not SHARED_GPT2_TOKENIZER.exists():
        sys.exit(f"GPT-2's tokenizer is absent: {SHARED_GPT2_TOKENIZER} (the shared folder beside the repository)")
    corpus = Path(args.corpus) if args.corpus else CORPUS_DIR / f"personachat-shaped-{args.dialogs}.json"
    if not corpus.exists():
        print(f"Writing the synthetic corpus {corpus} ...", flush=True)
        started = time.perf_counter()
        write_corpus(corpus, args.dialogs, SHARED_GPT2_TOKENIZER)
        print(f"  written in {time.perf_counter() - started:.1f} s, {corpus.stat().st_size / 1e6:.0f} MB")
    cache = Path(tempfile.mkdtemp(prefix="persona-prepare-bench-"))
    try:
        cold = run_child(str(corpus), str(cache), str(args.num_candidates), str(args.workers))
        warm = run_child(str(corpus), str(cache), str(args.num_candidates), str(args.workers))
        stats = cold["stats"]
        print(
            f"corpus: {corpus.name}, {corpus.stat().st_size / 1e6:.0f} MB; training split, num_candidates "
            f"{args.num_candidates}, max_history 2, {args.workers} workers"
        )
        print(
            f"  {stats['dialogs']:,} dialogs, {stats['examples']:,} examples, {stats['candidates']:,} candidates, "
            f"{stats['tokens']:,} tokens, truncated {stats['truncated']}"
        )
        print(f"  padding the classic layout would add (batch 4): {stats['padding_ratio']:.1%}")
        print(f"{'':24}{'seconds':>10}{'peak RSS GB':>14}")
        print(f"{'cold (empty cache)':24}{cold['seconds']:10.1f}{cold['peak_rss_gb']:14.2f}")
        print(f"{'warm (from the cache)':24}{warm['seconds']:10.2f}{warm['peak_rss_gb']:14.2f}")
        print(
            f"cache size: {folder_size(cache) / 1e6:.0f} MB (python and library imports, not counted above: "
            f"{cold['import_seconds']:.1f} s)"
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
