"""Preparation of a PersonaChat-scale corpus, and of corpora several times its size: cold time, peak RSS, cache
size, warm load time, side by side.

    python benchmarks/prepare.py [--scale 1 4] [--dialogs 17878] [--num_candidates 2] [--workers 2] [--corpus FILE]
    python benchmarks/prepare.py --spc_dialogs 9000 36000
    python benchmarks/prepare.py --spc_dialogs 2000 --num_candidates 16 --layouts

Without ``--corpus`` it writes (once, into ``benchmarks/.corpus/``) a synthetic corpus in the JSON
layout of transfer-learning-conv-ai with PersonaChat's shape: 17,878 training dialogs of 6 to 9 turns
(about 131k turns; ``--scale 4`` writes 4 times as many), 20 candidates per turn (19 utterances of
other dialogs and the gold reply), whole histories, personas of 4 or 5 sentences, English words of GPT-2's
vocabulary. It then prepares the
training split with GPT-2's tokenizer (``../shared/tokenizers/gpt2``) at the reference's settings
(``max_history 2``, ``num_candidates`` 2 by default), first into an empty cache (cold: reading,
distractors, tokenization, Arrow), then again from the cache (warm). Each run is a fresh process;
the peak RSS is the largest of the process and its ``datasets.map`` workers, and so is the peak anonymous memory
(sampled 20 times a second): RSS also counts the pages of the Arrow files a process maps, which grow with the
output and which the kernel drops under pressure; anonymous memory is what the preparation holds. The last lines
give each scale's time and peaks against the first scale's: preparation in bounded memory keeps them flat.

``--spc_dialogs N ...`` prepares instead conversation CSVs of real Synthetic-Persona-Chat text (the shared validation
CSV's conversations, repeated to N dialogs, both sides of each serving as the bot): no candidates in the file, so the
distractors are sampled.

``--layouts`` prepares the first corpus instead in both input layouts side by side (the same dialogs and sampled
candidates): the reference layout with GPT-2's tokenizer, the chat-template layout with SmolLM2's (each reply's own
tokens between the template's wrapper), and the chat template rendering every candidate in the whole conversation;
it prints each one's cold time against the reference layout's and a digest of the features (the two chat-template
variants must agree).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_GPT2_TOKENIZER = REPO.parent / "shared" / "tokenizers" / "gpt2"
SHARED_SPC = REPO.parent / "shared" / "data" / "spc" / "Synthetic-Persona-Chat_valid.csv"
SHARED_SMOLLM2, SMOLLM2_GGUF = (
    REPO.parent / "shared" / "models" / "smollm2-135m-instruct",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
)
CORPUS_DIR = Path(__file__).resolve().parent / ".corpus"
FEATURED = ("prefix_ids", "candidates", "truncated")  # the feature columns whose digest the layouts' runs compare


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


def write_spc_corpus(path: Path, dialogs: int) -> None:
    """A conversation CSV of ``dialogs`` dialogs (``dialogs // 2`` conversations, each read from both sides): the
    shared Synthetic-Persona-Chat CSV's rows, repeated in order."""
    with open(SHARED_SPC, newline="") as source:
        reader = csv.reader(source)
        header, rows = next(reader), list(reader)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows[i % len(rows)] for i in range(dialogs // 2))
    partial.replace(path)


def _anonymous_kb(pid: int) -> int:
    """A process's resident anonymous memory (RssAnon, kB): what it holds itself, without the pages of files it
    maps, which RSS also counts and the kernel drops under pressure; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def _largest_anonymous(stop: threading.Event, peak: list[int]) -> None:
    """Sample, 20 times a second, the anonymous memory of this process and of each of its map workers; keep the
    largest."""
    me = os.getpid()
    while not stop.wait(0.05):
        peak[0] = max(peak[0], *(_anonymous_kb(pid) for pid in (me, *_children(me))))


def _layout(variant: str):
    """The layout of a ``variant``: the reference layout on GPT-2's tokenizer, or the chat-template layout on
    SmolLM2's (``chat_template``; ``chat_template-whole`` renders every candidate in the whole conversation)."""
    from transformers import AutoTokenizer

    from persona.data import chat_layout
    from persona.data.input_layouts import ChatTemplateLayout, ReferenceLayout
    from persona.data.special_tokens import add_special_tokens

    if variant == "reference":
        tokenizer = AutoTokenizer.from_pretrained(str(SHARED_GPT2_TOKENIZER))
        add_special_tokens(tokenizer)
        return ReferenceLayout.for_tokenizer(tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(str(SHARED_SMOLLM2), gguf_file=SMOLLM2_GGUF)
    if variant == "chat_template-whole":
        chat_layout.reply_wrapper = lambda tokenizer: None
    return ChatTemplateLayout.for_tokenizer(tokenizer)


def prepare(corpus: str, cache: str, num_candidates: int, workers: int, variant: str = "reference") -> dict:
    """Prepare the training split in this process in the layout of ``variant`` (see :func:`_layout`); its time
    (after the imports and the tokenizer's load), statistics and peak RSS (workers included)."""
    stop, anonymous = threading.Event(), [0]
    threading.Thread(target=_largest_anonymous, args=(stop, anonymous), daemon=True).start()
    start = time.perf_counter()
    from persona.configs import DataArguments
    from persona.data import prepare_corpus

    layout = _layout(variant)
    imported = time.perf_counter()
    data = DataArguments(
        dataset_path=corpus,
        dataset_cache=cache,
        num_candidates=num_candidates,
        max_history=2,
        preprocessing_num_workers=workers,
        validation_split_size=0,
        input_layout=layout.name,
    )
    prepared = prepare_corpus(data, layout, max_positions=1024, roles=("train",))
    done = time.perf_counter()
    # This process's own high-water mark from /proc (getrusage's for itself would include the benchmark process it
    # was started from, Linux keeping it across exec), and the largest of its map workers.
    own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    peak = max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024
    stop.set()
    return {
        "seconds": done - imported,
        "import_seconds": imported - start,
        "digest": hashlib.sha256(
            json.dumps([prepared.features["train"].data.column(name).to_pylist() for name in FEATURED]).encode()
        ).hexdigest()[:16],
        "peak_rss_gb": peak / 1e9,
        "peak_anonymous_gb": anonymous[0] * 1024 / 1e9,
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


def measure(corpus: Path, num_candidates: int, workers: int, variant: str = "reference") -> dict:
    """Cold and warm preparation of ``corpus`` into a fresh cache, each in a fresh process, and the cache's size."""
    cache = Path(tempfile.mkdtemp(prefix="persona-prepare-bench-"))
    try:
        cold = run_child(str(corpus), str(cache), str(num_candidates), str(workers), variant)
        warm = run_child(str(corpus), str(cache), str(num_candidates), str(workers), variant)
        return {"cold": cold, "warm": warm, "cache_bytes": folder_size(cache)}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def compare_layouts(corpus: Path, num_candidates: int, workers: int) -> None:
    """Cold preparation of ``corpus`` in each layout, one after the other, each in a fresh process; the time against
    the reference layout's, and whether the two chat-template variants gave the same features."""
    variants = ("reference", "chat_template", "chat_template-whole")
    results = {variant: measure(corpus, num_candidates, workers, variant)["cold"] for variant in variants}
    print(f"{corpus.name}: training split, num_candidates {num_candidates}, max_history 2, {workers} workers")
    print(f"  {'layout':28}{'examples':>10}{'tokens':>12}{'seconds':>10}{'x reference':>13}  features")
    for variant, cold in results.items():
        stats = cold["stats"]
        print(
            f"  {variant:28}{stats['examples']:>10,}{stats['tokens']:>12,}{cold['seconds']:10.2f}"
            f"{cold['seconds'] / results['reference']['seconds']:13.2f}  {cold['digest']}"
        )
    same = results["chat_template"]["digest"] == results["chat_template-whole"]["digest"]
    print(f"  the chat template's features with and without whole renders are {'identical' if same else 'DIFFERENT'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dialogs", type=int, default=17878, help="training dialogs of the synthetic corpus at scale 1"
    )
    parser.add_argument("--scale", type=int, nargs="+", default=[1], help="corpus sizes, as multiples of --dialogs")
    parser.add_argument("--num_candidates", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="preprocessing_num_workers")
    parser.add_argument("--corpus", help="a corpus of your own instead of the synthetic one (any accepted layout)")
    parser.add_argument(
        "--spc_dialogs",
        type=int,
        nargs="+",
        help="instead, conversation CSVs of this many dialogs of real Synthetic-Persona-Chat text (../shared)",
    )
    parser.add_argument(
        "--layouts",
        action="store_true",
        help="instead, prepare the first corpus in both input layouts side by side: the reference layout (GPT-2's "
        "tokenizer), the chat template (SmolLM2's), and the chat template rendering every candidate whole",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        corpus, cache, candidates, workers, variant = args.child
        print(json.dumps(prepare(corpus, cache, int(candidates), int(workers), variant)))
        return
    if not SHARED_GPT2_TOKENIZER.exists():
        sys.exit(f"GPT-2's tokenizer is absent: {SHARED_GPT2_TOKENIZER} (the shared folder beside the repository)")
    corpora = {}  # data size against the first corpus -> corpus file
    if args.spc_dialogs:
        for dialogs in args.spc_dialogs:
            corpus = CORPUS_DIR / f"spc-{dialogs}.csv"
            if not corpus.exists():
                write_spc_corpus(corpus, dialogs)
            corpora[dialogs / args.spc_dialogs[0]] = corpus
    for scale in [] if args.spc_dialogs else [1] if args.corpus else args.scale:
        corpus = Path(args.corpus) if args.corpus else CORPUS_DIR / f"personachat-shaped-{args.dialogs * scale}.json"
        if not corpus.exists():
            print(f"Writing the synthetic corpus {corpus} ...", flush=True)
            started = time.perf_counter()
            write_corpus(corpus, args.dialogs * scale, SHARED_GPT2_TOKENIZER)
            print(f"  written in {time.perf_counter() - started:.1f} s, {corpus.stat().st_size / 1e6:.0f} MB")
        corpora[scale] = corpus
    if args.layouts:
        compare_layouts(corpora[min(corpora)], args.num_candidates, args.workers)
        return
    results = {scale: measure(corpus, args.num_candidates, args.workers) for scale, corpus in corpora.items()}
    print(f"training split, num_candidates {args.num_candidates}, max_history 2, {args.workers} workers")
    for scale, result in results.items():
        corpus, cold, warm, stats = corpora[scale], result["cold"], result["warm"], result["cold"]["stats"]
        print(f"scale {scale:g}: {corpus.name}, {corpus.stat().st_size / 1e6:.0f} MB")
        print(
            f"  {stats['dialogs']:,} dialogs, {stats['examples']:,} examples, {stats['candidates']:,} candidates, "
            f"{stats['tokens']:,} tokens, truncated {stats['truncated']}"
        )
        print(f"  padding the classic layout would add (batch 4): {stats['padding_ratio']:.1%}")
        print(f"  {'':24}{'seconds':>10}{'peak RSS GB':>14}{'anonymous GB':>14}")
        for name, run in (("cold (empty cache)", cold), ("warm (from the cache)", warm)):
            print(f"  {name:24}{run['seconds']:10.2f}{run['peak_rss_gb']:14.2f}{run['peak_anonymous_gb']:14.2f}")
        print(
            f"  cache size: {result['cache_bytes'] / 1e6:.0f} MB (python and library imports, not counted above: "
            f"{cold['import_seconds']:.1f} s)"
        )
    first = min(results)
    for scale in sorted(results)[1:]:
        base, cold = results[first]["cold"], results[scale]["cold"]
        print(
            f"scale {scale:g} against scale {first:g}: time x{cold['seconds'] / base['seconds']:.2f}, "
            f"peak RSS x{cold['peak_rss_gb'] / base['peak_rss_gb']:.2f}, "
            f"peak anonymous memory x{cold['peak_anonymous_gb'] / base['peak_anonymous_gb']:.2f} "
            f"(data x{scale / first:g})"
        )


if __name__ == "__main__":
    main()
