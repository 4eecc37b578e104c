"""Prepare a corpus once: read it, sample distractors, tokenize with ``datasets.map``, cache as Arrow.

The cache folder holds, per split, the canonical dialogs (as the model sees them: history cut to the
last ``2*max_history+1`` utterances, candidates to the count in use) and their features, plus
``stats.json``. A second run with the same corpus, tokenizer and options loads it memory-mapped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc

from persona.configs import DataArguments
from persona.data.cache import cache_key, tokenizer_fingerprint, write_atomically
from persona.data.candidates import reply_pool, split_view
from persona.data.features import build_features
from persona.data.readers import Corpus
from persona.data.sources import fingerprint, read_corpus, resolve
from persona.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class PreparedCorpus:
    """Features and dialogs of the training and evaluation splits, with their statistics."""

    features: datasets.DatasetDict
    dialogs: datasets.DatasetDict
    stats: dict
    cache_path: Path


HELDOUT = "heldout"


def conversation_key(dialog: dict) -> tuple[str, ...]:
    """The first three utterances of the conversation a dialog comes from: the same for both sides of a
    conversation of four utterances or more (different conversations that open alike share it too, and
    are then held out together)."""
    last = dialog["turns"][-1]
    return tuple([*last["history"], last["candidates"][-1]][:3])


def _holdout(corpus: Corpus, args: DataArguments) -> None:
    """Move about ``validation_split_size`` dialogs (a fraction or a count) of the training split to HELDOUT.

    Whole conversations move: with ``bot_side: both`` the other side of a held-out dialog would
    otherwise train on its very utterances.
    """
    dialogs = corpus[args.train_split]
    size = args.validation_split_size
    count = int(size) if size >= 1 else int(round(size * len(dialogs)))
    groups: dict[tuple, list[int]] = {}
    for index, dialog in enumerate(dialogs):
        groups.setdefault(conversation_key(dialog), []).append(index)
    if not 0 < count < len(dialogs) or len(groups) < 2:
        raise DataError(
            f"validation_split_size {size} leaves no training or no evaluation dialogs of {len(dialogs)}",
            where=args.dataset_path,
            fix="choose a fraction in (0, 1) or a count below the number of dialogs.",
        )
    members = list(groups.values())
    held: set[int] = set()
    for group in np.random.default_rng(args.sampling_seed).permutation(len(members)):
        if len(held) >= count:
            break
        held.update(members[group])
    corpus[HELDOUT] = [d for i, d in enumerate(dialogs) if i in held]
    corpus[args.train_split] = [d for i, d in enumerate(dialogs) if i not in held]


def role_splits(args: DataArguments, roles: tuple[str, ...]) -> dict[str, str]:
    """The split each role reads: ``train_split``, ``eval_split``, or the held-out part of the training split."""
    splits = {role: getattr(args, f"{role}_split") for role in roles}
    if "eval" in splits and args.validation_split_size > 0 and not args.eval_dataset_path:
        splits["eval"] = HELDOUT
    return splits


def read_splits(args: DataArguments, splits: dict[str, str], source: str, eval_source: str | None) -> Corpus:
    """The canonical dialogs of the wanted splits (``{role: split name}``), views trimmed and topped up.

    ``source`` and ``eval_source`` are the resolved ``dataset_path`` and ``eval_dataset_path``.
    """
    corpus = read_corpus(source, args.dataset_format, args.bot_side)
    if eval_source:
        eval_corpus = read_corpus(eval_source, args.dataset_format, args.bot_side)
        name = args.eval_split if args.eval_split in eval_corpus else next(iter(eval_corpus))
        corpus[args.eval_split] = eval_corpus[name]
    elif splits.get("eval") == HELDOUT:
        if args.train_split not in corpus:
            raise DataError(f"no '{args.train_split}' split to hold dialogs out of", where=args.dataset_path, fix=f"set train_split to one of {sorted(corpus)}.")
        _holdout(corpus, args)
    out: Corpus = {}
    for role, split in splits.items():
        if split not in corpus:
            raise DataError(
                f"the corpus has no '{split}' split (it has {sorted(corpus)})",
                where=args.dataset_path or "PersonaChat",
                fix=f"set {role}_split to one of them, pass eval_dataset_path, or set validation_split_size.",
            )
        limit = args.max_train_dialogs if role == "train" else args.max_eval_dialogs
        dialogs = corpus[split][:limit] if limit else corpus[split]
        wanted = args.num_candidates if role == "train" else args.eval_num_candidates
        out[role], sampled = split_view(
            dialogs, wanted=wanted, max_history=args.max_history, seed=args.sampling_seed, split=split, pool=reply_pool(corpus[split])
        )
        if sampled:
            logger.info("Sampled %d distractors for the %s split (%d candidates per turn)", sampled, split, wanted)
    return out


def split_stats(features: datasets.Dataset, dialogs: datasets.Dataset, batch_size: int) -> dict:
    """Counts of one split, and the padding the classic [batch, candidates, length] layout would carry."""
    prefix_lengths = pc.list_value_length(features.data.column("prefix_ids")).to_numpy(zero_copy_only=False)
    candidates = features.data.column("candidates")
    counts = pc.list_value_length(candidates).to_numpy(zero_copy_only=False)
    reply_lengths = pc.list_value_length(pc.list_flatten(candidates)).to_numpy(zero_copy_only=False) + 2
    owners = np.repeat(np.arange(len(counts)), counts)
    longest = np.zeros(len(counts), dtype=np.int64)
    np.maximum.at(longest, owners, reply_lengths)
    real = int(np.sum(prefix_lengths[owners] + reply_lengths))
    padded = 0
    for start in range(0, len(counts), batch_size):
        chunk = slice(start, start + batch_size)
        padded += len(counts[chunk]) * counts[chunk].max() * (prefix_lengths[chunk] + longest[chunk]).max()
    return {
        "dialogs": len(dialogs),
        "examples": len(features),
        "candidates": int(counts.sum()),
        "tokens": real,
        "padding_ratio": round(1 - real / padded, 4) if padded else 0.0,
        "truncated": int(pc.sum(features.data.column("truncated")).as_py() or 0),
    }


def prepare_corpus(
    args: DataArguments, tokenizer, *, max_length: int, roles: tuple[str, ...] = ("train", "eval"), stats_batch_size: int = 4
) -> PreparedCorpus:
    """Load the prepared splits from the cache, or build and cache them (atomically).

    ``roles`` picks the splits (``train``, ``eval``); ``max_length`` is the model's positions unless
    ``args.max_input_length`` is smaller. Under a multi-process launch, call it inside
    ``main_process_first()`` so that one process builds and the others load.
    """
    max_length = min(max_length, args.max_input_length or max_length)
    splits = role_splits(args, roles)
    source = resolve(args.dataset_path, args.dataset_cache)
    eval_source = resolve(args.eval_dataset_path, args.dataset_cache) if args.eval_dataset_path and "eval" in roles else None
    options = {k: v for k, v in vars(args).items() if k not in ("dataset_path", "eval_dataset_path", "dataset_cache", "preprocessing_num_workers")}
    key = cache_key(
        corpus=fingerprint(source),
        eval_corpus=fingerprint(eval_source) if eval_source else None,
        tokenizer=tokenizer_fingerprint(tokenizer),
        options=options,
        splits=splits,
        max_length=max_length,
    )
    name = Path(source.rstrip("/")).name.replace(".", "_") or "corpus"
    cache_path = Path(args.dataset_cache) / f"{name}-{key[:16]}"
    if cache_path.exists():
        logger.info("Loading prepared features from the cache %s (no tokenization)", cache_path)
    else:
        logger.info("Preparing %s (cache %s)", source, cache_path)

        def build(folder: Path) -> None:
            corpus = read_splits(args, splits, source, eval_source)
            stats = {"cache_path": str(cache_path), "max_length": max_length, "splits": {}}
            for role in list(corpus):
                # Written first and read back memory-mapped: map's workers then open the file
                # instead of receiving a pickled copy of the dialogs, and the Python lists are freed.
                datasets.Dataset.from_list(corpus.pop(role)).save_to_disk(str(folder / "dialogs" / role))
                dialog_set = datasets.load_from_disk(str(folder / "dialogs" / role))
                features = build_features(
                    dialog_set,
                    tokenizer,
                    max_length=max_length,
                    permutations=args.personality_permutations if role == "train" else 1,
                    num_proc=args.preprocessing_num_workers,
                    source=f"{args.dataset_path or 'PersonaChat'} [{splits[role]}]",
                )
                features.save_to_disk(str(folder / "features" / role))
                dialog_set.cleanup_cache_files()  # map's own output, now copied into features/
                stats["splits"][role] = {"split": splits[role], **split_stats(features, dialog_set, stats_batch_size)}
            for name in ("dialogs", "examples", "candidates", "tokens", "truncated"):
                stats[name] = sum(split[name] for split in stats["splits"].values())
            stats["padding_ratio"] = max(split["padding_ratio"] for split in stats["splits"].values())
            (folder / "stats.json").write_text(json.dumps(stats, indent=2))

        write_atomically(cache_path, build)
    stats = json.loads((cache_path / "stats.json").read_text())
    features = datasets.DatasetDict({role: datasets.load_from_disk(str(cache_path / "features" / role)) for role in roles})
    dialogs = datasets.DatasetDict({role: datasets.load_from_disk(str(cache_path / "dialogs" / role)) for role in roles})
    return PreparedCorpus(features=features, dialogs=dialogs, stats=stats, cache_path=cache_path)
