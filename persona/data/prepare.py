"""Prepare a corpus once: stream it into Arrow, sample distractors, tokenize with ``datasets.map``, cache as Arrow.

Memory stays bounded whatever the corpus size: the readers yield one dialog at a time, which is written to an
Arrow file as it comes, and every later step reads those files memory-mapped, batch by batch, and writes its
output where the cache keeps it (no copy). The cache folder holds, per role, the canonical dialogs (as the model
sees them: history cut to the last ``2*max_history+1`` utterances, candidates to the count in use) in
``dialogs/ROLE/`` and their features in ``features/ROLE/`` (Arrow files, one per ``datasets.map`` worker), plus
``stats.json``, and for the ``eval`` role ``personas/eval.json``: the distinct personas of its whole split, before
``max_eval_dialogs`` cuts it (the pool persona-eval's persona swaps draw from). A second run with the same corpus,
tokenizer and options loads it memory-mapped.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets.arrow_writer import ArrowWriter

from persona.configs import DataArguments
from persona.data.cache import cache_key, tokenizer_fingerprint, write_atomically
from persona.data.candidates import COUNT_COLUMNS, candidate_counts, split_view
from persona.data.features import build_features
from persona.data.input_layouts import Layout
from persona.data.layout import gold_reply, history_window, kept_candidates
from persona.data.readers import SILENCE, WHOLE_FILE, Stream
from persona.data.skips import SkipLog
from persona.data.sources import corpus_stream, fingerprint, resolve
from persona.errors import DataError
from persona.interrupts import deferred_interrupts, raise_if_interrupted

logger = logging.getLogger(__name__)


@dataclass
class PreparedCorpus:
    """Features and dialogs of the training and evaluation splits, with their statistics; ``personas``: per role
    that has one (``eval``), the distinct personas of its whole split, each a list of sentences."""

    features: datasets.DatasetDict
    dialogs: datasets.DatasetDict
    stats: dict
    cache_path: Path
    personas: dict[str, list[list[str]]]


READ = "read"  # the build folder's scratch space: the corpus as streamed, and the views of it
WRITE_BATCH = 1000  # dialogs buffered before the Arrow writer writes them
DIALOG_FEATURES = datasets.Features(
    {
        "persona": datasets.List(datasets.Value("string")),
        "turns": datasets.List(
            {"history": datasets.List(datasets.Value("string")), "candidates": datasets.List(datasets.Value("string"))}
        ),
        "record": datasets.Value("string"),
    }
)
EXTRA_FEATURES = datasets.Features(  # what holding out and drawing distractors need of the whole dialog
    {
        "utterances": datasets.List(datasets.Value("string")),  # every utterance of the dialog, history windows aside
        "conversation": datasets.List(datasets.Value("string")),  # its conversation_key
        **{name: datasets.Value("int32") for name in COUNT_COLUMNS},  # its turns' fewest and most candidates
    }
)
READ_FEATURES = datasets.Features({**DIALOG_FEATURES, **EXTRA_FEATURES})  # a split as streamed
HELDOUT = "heldout"  # the part of the training split that validation_split_size holds out
EVAL_FILE = "eval_dataset_path"  # the evaluated split of a separate eval_dataset_path


def conversation_key(dialog: dict) -> tuple[str, ...]:
    """The first three utterances of the conversation a dialog comes from (``__ SILENCE __`` left out): the
    same for both sides of a conversation of four utterances or more (different conversations that open
    alike share it too, and are then held out together)."""
    last = dialog["turns"][-1]
    return tuple([u for u in (*last["history"], gold_reply(last["candidates"])) if u != SILENCE][:3])


def write_splits(stream: Stream, folder: Path) -> tuple[dict[str, datasets.Dataset], dict[str, Path]]:
    """The dialogs of ``stream`` written as they come to Arrow files in ``folder`` (``datasets``' own writer, in
    batches), then read back memory-mapped: memory stays flat whatever the corpus size. Each split is two files
    written side by side, read as one dataset of :data:`READ_FEATURES`: its canonical columns (``N.arrow``, which
    become the cache's dialogs as they are when no turn changes) and the :data:`EXTRA_FEATURES` (``N-extra.arrow``).
    A split the stream leaves unread (``(split, None)``) is present, empty. Returns the datasets and the canonical
    file of each split read."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = (DIALOG_FEATURES, EXTRA_FEATURES)
    writers: dict[str, list[ArrowWriter]] = {}
    paths: dict[str, list[Path]] = {}
    unread: set[str] = set()
    try:
        for split, dialog in stream:
            raise_if_interrupted()  # the stop deferred by prepare_corpus, taken between two dialogs
            if dialog is None:
                unread.add(split)
                continue
            if split not in writers:
                number = len(writers)
                paths[split] = [folder / f"{number}.arrow", folder / f"{number}-extra.arrow"]
                writers[split] = [
                    ArrowWriter(features=features, path=str(path), writer_batch_size=WRITE_BATCH)
                    for features, path in zip(parts, paths[split])
                ]
            for writer, features in zip(writers[split], parts):
                writer.write({name: dialog[name] for name in features})
        for writer in chain.from_iterable(writers.values()):
            writer.finalize()
    finally:
        for writer in chain.from_iterable(writers.values()):
            writer.close()
    corpus = {split: _empty_split() for split in unread}
    corpus.update(
        (split, datasets.concatenate_datasets([datasets.Dataset.from_file(str(path)) for path in pair], axis=1))
        for split, pair in paths.items()
    )
    return corpus, {split: pair[0] for split, pair in paths.items()}


def _empty_split() -> datasets.Dataset:
    """A split with no dialogs (every record skipped, or left unread)."""
    return datasets.Dataset.from_dict({name: [] for name in READ_FEATURES}, features=READ_FEATURES)


def _holdout(corpus: dict[str, datasets.Dataset], args: DataArguments, split: str) -> None:
    """Move about ``validation_split_size`` dialogs (a fraction or a count) of ``split`` to HELDOUT.

    Whole conversations move: with ``bot_side: both`` the other side of a held-out dialog would
    otherwise train on its very utterances.
    """
    dialogs = corpus[split]
    size = args.validation_split_size
    count = int(size) if size >= 1 else int(round(size * len(dialogs)))
    groups: dict[tuple, list[int]] = {}
    keys = (key for batch in dialogs.select_columns(["conversation"]).iter(1000) for key in batch["conversation"])
    for index, key in enumerate(keys):
        groups.setdefault(tuple(key), []).append(index)
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
    corpus[HELDOUT] = dialogs.select(sorted(held))
    corpus[split] = dialogs.select([i for i in range(len(dialogs)) if i not in held])


def _missing_split(split: str, corpus: dict, where: str, role: str) -> DataError:
    return DataError(
        f"the corpus has no '{split}' split (it has {sorted(corpus)})",
        where=where,
        fix=f"set {role}_split to one of them, pass eval_dataset_path, or set validation_split_size.",
    )


def resolved_sources(args: DataArguments, roles: tuple[str, ...]) -> tuple[str, str | None]:
    """``dataset_path`` and, when the eval role reads it, ``eval_dataset_path`` as local paths (URLs downloaded) or
    Hub ids."""
    source = resolve(args.dataset_path, args.dataset_cache)
    return source, resolve(
        args.eval_dataset_path, args.dataset_cache
    ) if args.eval_dataset_path and "eval" in roles else None


def _streamed_view(stream: Stream, keep: int, max_history: int) -> Stream:
    """The dialogs of ``stream`` as they will be stored: each turn's history cut to its window and its last ``keep``
    candidates only (all for ``keep <= 0``; no role reads more, and a file's 20 candidates per turn are most of its
    bytes), with what later steps need of the whole dialog: its ``utterances`` (which distractors must avoid), its
    ``conversation`` key (by which it is held out) and its candidate counts (whether distractors are needed)."""
    for split, dialog in stream:
        if dialog is None:  # a split left unread
            yield split, None
            continue
        utterances = {u for turn in dialog["turns"] for u in (*turn["history"], gold_reply(turn["candidates"]))}
        turns = [
            {
                "history": history_window(turn["history"], max_history),
                "candidates": kept_candidates(turn["candidates"], keep),
            }
            for turn in dialog["turns"]
        ]
        yield (
            split,
            {
                **dialog,
                "turns": turns,
                "utterances": sorted(utterances),
                "conversation": list(conversation_key(dialog)),
                **candidate_counts(turns),
            },
        )


def _read(
    source: str, args: DataArguments, skips: SkipLog, folder: Path, wanted: list[int], splits: set[str]
) -> tuple[dict[str, datasets.Dataset], dict[str, Path]]:
    """The ``splits`` of ``source`` (a file without splits inside: the whole of it) written to Arrow in ``folder``,
    with as many candidates per turn as the roles that read it want at most (``wanted``); any other split of the
    source, and a split whose every record was skipped, is present, empty. Also the canonical file of each split
    read (see :func:`write_splits`)."""
    keep = 0 if min(wanted) <= 0 else max(wanted)
    dialogs = corpus_stream(source, args.dataset_format, args.bot_side, skips, splits)
    corpus, files = write_splits(_streamed_view(dialogs, keep, args.max_history), folder)
    empties = {split: _empty_split() for split, reasons in skips.counts.items() if reasons and split not in corpus}
    return {**empties, **corpus}, files


def _read_eval_file(
    eval_source: str, args: DataArguments, skips: SkipLog, folder: Path
) -> tuple[datasets.Dataset, str | None]:
    """The evaluated split of a separate ``eval_dataset_path`` (the whole file, or its ``eval_split``) and its
    canonical file; its skipped records counted apart (its splits may be named like the training file's), under
    :data:`EVAL_FILE`."""
    eval_skips = SkipLog(strict=skips.strict)
    eval_corpus, eval_files = _read(
        eval_source, args, eval_skips, folder / READ / "eval_source", [args.eval_num_candidates], {args.eval_split}
    )
    skips.counts[EVAL_FILE].update(eval_skips.reasons())
    name = next((s for s in (WHOLE_FILE, args.eval_split) if s in eval_corpus), None)
    if name is None:
        raise _missing_split(args.eval_split, eval_corpus, args.eval_dataset_path, "eval")
    return eval_corpus[name], eval_files.get(name)


def _role_views(args, corpus, splits, whole_splits, files, skips: SkipLog, folder: Path) -> dict:
    """Each role's dialogs (``splits``: the split of ``corpus`` each reads), cut to ``max_*_dialogs`` and given the
    role's candidates, written to ``folder``'s ``dialogs/ROLE/``."""
    where = args.dataset_path or "PersonaChat"
    out: dict[str, datasets.Dataset] = {}
    for role, split in splits.items():
        if split not in corpus:
            raise _missing_split(split, corpus, where, role)
        limit = args.max_train_dialogs if role == "train" else args.max_eval_dialogs
        dialogs = corpus[split].select(range(min(limit, len(corpus[split])))) if limit else corpus[split]
        if not len(dialogs):
            raise DataError(
                f"no usable dialogs in the '{split}' split (records skipped, by reason: "
                f"{skips.of(split) or skips.reasons()})",
                where=args.eval_dataset_path if split == EVAL_FILE else where,
                fix="check the file: every record of the split was skipped (the warnings above name the first ones).",
            )
        if role == "eval":
            _write_persona_pool(folder, role, corpus[split])
        wanted = args.num_candidates if role == "train" else args.eval_num_candidates
        out[role], sampled = split_view(
            dialogs,
            wanted=wanted,
            seed=args.sampling_seed,
            role=role,
            split=corpus[split],
            cache_file=str(_role_folder(folder, "dialogs", role) / "data.arrow"),
            canonical_file=files.get(split) if dialogs is whole_splits.get(split) else None,
        )
        if sampled:
            logger.info("Sampled %d distractors for the %s split (%d candidates per turn)", sampled, split, wanted)
    return out


def _write_persona_pool(folder: Path, role: str, split: datasets.Dataset) -> None:
    """Write the distinct personas of ``split`` (sorted) as ``folder``'s ``personas/ROLE.json``."""
    pool = sorted({tuple(persona) for persona in split["persona"]})
    (folder / "personas").mkdir(exist_ok=True)
    (folder / "personas" / f"{role}.json").write_text(json.dumps([list(persona) for persona in pool]))


def read_splits(
    args: DataArguments,
    roles: tuple[str, ...],
    sources: tuple[str, str | None],
    skips: SkipLog,
    folder: Path,
) -> tuple[dict[str, datasets.Dataset], dict[str, str]]:
    """The canonical dialogs of each role (``train``, ``eval``), trimmed and topped up, written to ``folder``'s
    ``dialogs/ROLE/``, and the split each reads.

    ``sources`` are the resolved ``dataset_path`` and ``eval_dataset_path``; the corpus is streamed into Arrow files
    in ``folder``'s scratch space (:data:`READ`) and every later step reads them memory-mapped. A single file with no
    splits inside is the training split when training, the evaluated split otherwise; training on such a file
    evaluates only on ``eval_dataset_path`` or a ``validation_split_size`` part, else on nothing (the ``eval`` role
    is then left out).
    """
    source, eval_source = sources
    where = args.dataset_path or "PersonaChat"
    wanted = [args.num_candidates] if "train" in roles else []
    wanted += [args.eval_num_candidates] if "eval" in roles and not eval_source else []
    holding_out = "eval" in roles and not eval_source and args.validation_split_size > 0
    evaluated_here = "eval" in roles and not eval_source and not holding_out
    splits_read = {args.train_split} if "train" in roles or holding_out else set()
    splits_read |= {args.eval_split} if evaluated_here else set()
    corpus, files = _read(
        source, args, skips, folder / READ / "source", wanted or [args.eval_num_candidates], splits_read
    )
    whole_splits = dict(corpus)  # each split as read, before any part is held out or left out
    whole_file = WHOLE_FILE in corpus
    train_split = WHOLE_FILE if whole_file else args.train_split
    splits = {"train": train_split} if "train" in roles else {}
    if "eval" in roles:
        if eval_source:
            corpus[EVAL_FILE], files[EVAL_FILE] = _read_eval_file(eval_source, args, skips, folder)
            whole_splits[EVAL_FILE] = corpus[EVAL_FILE]
            splits["eval"] = EVAL_FILE
        elif args.validation_split_size > 0:
            if train_split not in corpus:
                raise DataError(
                    f"no '{train_split}' split to hold dialogs out of",
                    where=where,
                    fix=f"set train_split to one of {sorted(corpus)}.",
                )
            _holdout(corpus, args, train_split)
            splits["eval"] = HELDOUT
        elif not (whole_file and "train" in roles):
            splits["eval"] = WHOLE_FILE if whole_file else args.eval_split
    return _role_views(args, corpus, splits, whole_splits, files, skips, folder), splits


def split_stats(features: datasets.Dataset, dialogs: datasets.Dataset, batch_size: int, overhead: int) -> dict:
    """Counts of one split, and the padding the classic [batch, candidates, length] layout would carry (``overhead``:
    the tokens the collator adds around each stored candidate)."""
    prefix_lengths = pc.list_value_length(features.data.column("prefix_ids")).to_numpy(zero_copy_only=False)
    candidates = features.data.column("candidates")
    counts = pc.list_value_length(candidates).to_numpy(zero_copy_only=False)
    reply_lengths = pc.list_value_length(pc.list_flatten(candidates)).to_numpy(zero_copy_only=False) + overhead
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


def _cache_path(
    args: DataArguments, layout: Layout, roles: tuple[str, ...], max_input_length: int, sources: tuple
) -> Path:
    """The cache folder of these splits: named after the corpus, keyed by its content, the layout (its tokenizer and
    leading-space rule) and options."""
    source, eval_source = sources
    ignored = ("dataset_path", "eval_dataset_path", "dataset_cache", "preprocessing_num_workers", "input_layout")
    key = cache_key(
        corpus=fingerprint(source),
        eval_corpus=fingerprint(eval_source) if eval_source else None,
        tokenizer=tokenizer_fingerprint(layout.tokenizer),
        layout=[layout.name, layout.leading_space],
        options={k: v for k, v in vars(args).items() if k not in ignored},
        roles=list(roles),
        max_length=max_input_length,
    )
    name = Path(source.rstrip("/")).name.replace(".", "_") or "corpus"
    return Path(args.dataset_cache) / f"{name}-{key[:16]}"


def _role_folder(folder: Path, kind: str, role: str) -> Path:
    """Where the cache in ``folder`` keeps the ``kind`` (``dialogs``, ``features``) of ``role``: a folder of Arrow
    files, made if absent."""
    path = folder / kind / role
    path.mkdir(parents=True, exist_ok=True)
    return path


def _from_files(path: Path) -> datasets.Dataset:
    """The dataset of a folder of Arrow files (one per ``datasets.map`` worker, in their order), memory-mapped."""
    parts = [datasets.Dataset.from_file(str(file)) for file in sorted(path.glob("*.arrow"))]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _prepare_role(
    folder: Path, role: str, dialogs: datasets.Dataset, split: str, layout: Layout, args, skips: SkipLog, **options
) -> dict:
    """Write the features of one role's dialogs (already in ``folder``) into ``folder``; return its statistics."""
    features = build_features(
        dialogs,
        layout,
        max_input_length=options["max_input_length"],
        permutations=args.personality_permutations if role == "train" else 1,
        num_proc=args.preprocessing_num_workers,
        skips=skips,
        split=f"{role} turns",
        desc=f"{args.dataset_path or 'PersonaChat'} [{split}]",
        folder=_role_folder(folder, "features", role),
        scratch=folder / READ,
        label_history=args.label_history and role == "train",  # evaluation scores the gold reply alone
        persona_contrast=args.persona_contrast if role == "train" else 0,
        guidance_distillation=args.guidance_distillation and role == "train",
        seed=args.sampling_seed,
    )
    if not len(features):
        raise DataError(
            f"no usable turns in the '{split}' split ({skips.reasons()})",
            where=args.dataset_path or "PersonaChat",
            fix="check max_input_length and the corpus: every turn was skipped.",
        )
    read_skips = skips.of(split) if split != HELDOUT else {}
    return {
        "split": split,
        **split_stats(features, dialogs, options["stats_batch_size"], layout.reply_overhead),
        "skipped": dict(Counter(read_skips) + Counter(skips.of(f"{role} turns"))),
    }


def _totals(splits: dict) -> dict:
    """The statistics of all splits together."""
    totals = {
        name: sum(split[name] for split in splits.values())
        for name in ("dialogs", "examples", "candidates", "tokens", "truncated")
    }
    totals["padding_ratio"] = max(split["padding_ratio"] for split in splits.values())
    skipped = sum((Counter(split["skipped"]) for split in splits.values()), Counter())
    return {**totals, "skipped": dict(sorted(skipped.items()))}


def _from_cache(cache_path: Path, roles: tuple[str, ...], args: DataArguments) -> PreparedCorpus:
    """The prepared splits of ``roles`` read from the cache (memory-mapped), with warnings about what they lack."""
    stats = json.loads((cache_path / "stats.json").read_text())
    if stats["skipped"]:
        count, where = sum(stats["skipped"].values()), args.dataset_path or "PersonaChat"
        logger.warning("Skipped %d unusable record(s) of %s, by reason: %s", count, where, stats["skipped"])
    present = [role for role in roles if role in stats["splits"]]
    if "eval" in roles and "eval" not in present:
        logger.warning(
            "%s is one file with no splits inside: training on all of it and evaluating on nothing. To evaluate, pass "
            "eval_dataset_path (a held-out corpus) or validation_split_size (a fraction or a number of dialogs to "
            "hold out).",
            args.dataset_path,
        )
    read = {
        kind: {role: _from_files(cache_path / kind / role) for role in present} for kind in ("features", "dialogs")
    }
    pools = {role: cache_path / "personas" / f"{role}.json" for role in present}
    personas = {role: json.loads(pool.read_text()) for role, pool in pools.items() if pool.exists()}
    return PreparedCorpus(
        datasets.DatasetDict(read["features"]), datasets.DatasetDict(read["dialogs"]), stats, cache_path, personas
    )


@contextmanager
def _frozen_heap():
    """Within this block Python's cyclic garbage collector leaves alone the objects alive when it starts (the
    libraries, the tokenizer, a loaded model): reading a corpus makes millions of small lists, and each full
    collection would otherwise walk that whole heap again. The ``datasets.map`` workers forked inside inherit the
    frozen set, and so leave those pages of the parent's unwritten too."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def prepare_corpus(
    args: DataArguments,
    layout: Layout,
    *,
    max_positions: int,
    roles: tuple[str, ...] = ("train", "eval"),
    stats_batch_size: int = 4,
) -> PreparedCorpus:
    """Load the prepared splits from the cache, or build and cache them (atomically), in the model's ``layout``.

    ``roles`` picks the splits (``train``, ``eval``); inputs hold at most the model's ``max_positions`` tokens, or
    ``args.max_input_length`` where that is smaller. Unusable records are skipped and counted (``skipped`` in the
    statistics, by reason), or stop the preparation when ``args.strict``. The ``eval`` role is absent from
    the result when training on a single file with nothing to evaluate on (a warning says what to pass).
    Under a multi-process launch, call it inside ``main_process_first()`` so that one process builds and
    the others load.
    """
    max_input_length = args.input_length(max_positions)
    sources = resolved_sources(args, roles)
    cache_path = _cache_path(args, layout, roles, max_input_length, sources)
    if cache_path.exists():
        logger.info("Loading prepared features from the cache %s (no tokenization)", cache_path)
        return _from_cache(cache_path, roles, args)
    logger.info("Preparing %s (cache %s, inputs of at most %d tokens)", sources[0], cache_path, max_input_length)

    def build(folder: Path) -> None:
        # A stop signal is taken at safe points (between dialogs, batches and splits), never inside a library's
        # clean-up, where Python would print it and carry on.
        with deferred_interrupts(), _frozen_heap():
            skips = SkipLog(strict=args.strict)
            corpus, splits = read_splits(args, roles, sources, skips, folder)
            stats = {"cache_path": str(cache_path), "max_input_length": max_input_length, "splits": {}}
            for role in list(corpus):
                raise_if_interrupted()
                stats["splits"][role] = _prepare_role(
                    folder,
                    role,
                    corpus.pop(role),
                    splits[role],
                    layout,
                    args,
                    skips,
                    max_input_length=max_input_length,
                    stats_batch_size=stats_batch_size,
                )
            (folder / "stats.json").write_text(json.dumps({**stats, **_totals(stats["splits"])}, indent=2))
            shutil.rmtree(folder / READ)  # the corpus as read, before the views (now in dialogs/), and scratch files

    write_atomically(cache_path, build)
    return _from_cache(cache_path, roles, args)
