"""Where a corpus comes from (a file, a folder, a URL, a Hub id) and the fingerprint of its content."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from persona.data.readers import (
    CORPUS_SUFFIXES,
    Corpus,
    Splits,
    Stream,
    collect,
    hub_rows,
    read_file,
    read_folder,
)
from persona.data.skips import SkipLog
from persona.errors import DataError, first_line
from persona.hub_names import is_hub_id

PERSONACHAT_URL = "https://s3.amazonaws.com/datasets.huggingface.co/personachat/personachat_self_original.json"


def is_url(path: str) -> bool:
    """Whether ``path`` is an http(s) address."""
    return path.startswith(("http://", "https://"))


def download(url: str, cache_dir: str) -> Path:
    """Download ``url`` once into ``cache_dir/downloads`` (atomically: a download cut short, fewer bytes than its
    ``Content-Length``, never enters the cache) and return the local file."""
    target = (
        Path(cache_dir) / "downloads" / (hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + url.rsplit("/", 1)[-1])
    )
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            announced, received = response.headers.get("Content-Length"), 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                received += len(chunk)
        if announced is not None and announced.isdigit() and received != int(announced):
            raise OSError(f"the download ended at {received:,} of its {int(announced):,} bytes")
        os.replace(partial, target)
    except OSError as error:
        Path(partial).unlink(missing_ok=True)
        raise DataError(
            f"cannot download the corpus ({error})",
            where=url,
            fix="download it on a machine with network access and pass its local path as dataset_path "
            "(for example dataset_path: data/personachat_self_original.json).",
        ) from None
    return target


def resolve(dataset_path: str, cache_dir: str) -> str:
    """A local path for files, folders and URLs (downloading them); a Hub id is returned as is."""
    source = dataset_path or PERSONACHAT_URL
    return str(download(source, cache_dir)) if is_url(source) else source


def is_hub_dataset(source: str) -> bool:
    """Whether a resolved source is a Hub dataset id (``user/name``, not a corpus file's name) rather than a local
    path."""
    return "/" in source and Path(source).suffix.lower() not in CORPUS_SUFFIXES and is_hub_id(source)


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets`` ``save_to_disk`` (a DatasetDict or a Dataset)."""
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())


def _load_hub_dataset(source: str):
    import datasets

    path = Path(source)
    try:
        if is_saved_dataset(path):
            loaded = datasets.load_from_disk(source)
        else:
            loaded = datasets.load_dataset(source)
    except Exception as error:  # datasets raises many kinds; all mean "cannot read this dataset"
        raise DataError(
            f"cannot load the dataset ({first_line(error)})",
            where=source,
            fix="check the id; offline, download it elsewhere (datasets save_to_disk) and pass the folder, "
            "or pass a local corpus file as dataset_path.",
        ) from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


KNOWN_FILES = {  # where a corpus file a recipe names comes from, for a machine that lacks it
    "Synthetic-Persona-Chat": "it is Synthetic-Persona-Chat (Google Research, CC BY 4.0), the Hub dataset "
    "google/Synthetic-Persona-Chat: hf download google/Synthetic-Persona-Chat --repo-type dataset --local-dir DIR, "
    "then pass --dataset_path with the CSV in DIR",
}


def fingerprint(source: str) -> str:
    """A digest of the corpus content: file bytes for local files and folders, the dataset fingerprint for Hub ids."""
    digest = hashlib.sha256()
    path = Path(source)
    if not path.exists() and not is_hub_dataset(source):
        known = next((how for name, how in KNOWN_FILES.items() if name in path.name), None)
        raise DataError(
            "file not found",
            where=source,
            fix=f"{known}." if known else "check dataset_path (a file, a folder, a URL or a Hub id).",
        )
    if path.is_file():
        files = [path]
    elif path.is_dir() and not is_saved_dataset(path):
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        for split, dataset in sorted(_load_hub_dataset(source).items()):
            digest.update(f"{split}:{dataset._fingerprint}".encode())
        return digest.hexdigest()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def corpus_stream(
    source: str,
    dataset_format: str = "auto",
    bot_side: str = "both",
    skips: SkipLog | None = None,
    splits: Splits = None,
) -> Stream:
    """The dialogs of a resolved corpus as ``(split, dialog)`` pairs, read in bounded memory; unusable records are
    skipped into ``skips``. A single file with no splits inside gives the one split ``WHOLE_FILE``; of a corpus with
    splits, those of ``splits`` are read and each other one is told as ``(split, None)``."""
    path, skips = Path(source), skips or SkipLog()
    if dataset_format == "hub" or is_hub_dataset(source) or is_saved_dataset(path):
        return hub_rows(_load_hub_dataset(source), bot_side, source, skips, splits)
    if path.is_dir():
        return read_folder(path, dataset_format, bot_side, skips, splits)
    return read_file(path, dataset_format, bot_side, skips, splits=splits)


def read_corpus(
    source: str, dataset_format: str = "auto", bot_side: str = "both", skips: SkipLog | None = None
) -> Corpus:
    """All splits of a resolved corpus held as lists of dialogs (:func:`corpus_stream` gathered), for a corpus small
    enough to hold."""
    return collect(corpus_stream(source, dataset_format, bot_side, skips))
