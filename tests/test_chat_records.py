"""Chat records in (OpenAI messages, ShareGPT) and out (persona-data --export_messages)."""

from __future__ import annotations

import csv
import json

import pytest

from persona.configs import DataArguments
from persona.data import prepare_corpus
from persona.data.corpus_file import CorpusFile
from persona.data.input_layouts import ChatTemplateLayout, ReferenceLayout
from persona.data.readers import SILENCE, WHOLE_FILE, detect_format, parse_conversation_text
from persona.data.skips import SkipLog
from persona.data.sources import corpus_stream, read_corpus
from persona.errors import DataError
from tests.conftest import CONVERSATIONS, QUICKSTART, needs_shared, write_conversations

SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


def _csv_rows(path, count: int) -> list[dict]:
    with open(path, newline="") as handle:
        return [row for _, row in zip(range(count), csv.DictReader(handle))]


def _chats_of_csv(rows: list[dict]) -> list[list[dict]]:
    """Each CSV conversation as two chats, user 1 then user 2 as the assistant, written by hand from the columns."""
    chats = []
    for row in rows:
        utterances, first = parse_conversation_text(row["Best Generated Conversation"], "row")
        for side in (0, 1):
            persona = [line.strip() for line in row[f"user {side + 1} personas"].splitlines() if line.strip()]
            speakers = [(first + index) % 2 for index in range(len(utterances))]
            chat = [{"role": "system", "content": " ".join(persona)}]
            chat += [
                {"role": "assistant" if speaker == side else "user", "content": text}
                for speaker, text in zip(speakers, utterances)
            ]
            chats.append(chat)
    return chats


def _write_chats(path, chats: list[list[dict]], chat_format: str):
    if chat_format == "messages":
        path.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats))
    else:
        records = [
            {"conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in chat]}
            for chat in chats
        ]
        path.write_text(json.dumps(records, indent=1))
    return path


@pytest.mark.parametrize("input_layout", ["reference", "chat_template"])
def test_the_shared_csv_as_messages_and_sharegpt_prepares_into_the_same_features(
    tmp_path, tokenizer, plain_chat_model, input_layout
):
    from transformers import AutoTokenizer

    source = tmp_path / "spc.csv"
    rows = _csv_rows(needs_shared("data", "spc", "Synthetic-Persona-Chat_valid.csv"), 12)
    with open(source, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    chats = _chats_of_csv(rows)
    files = {
        "csv": source,
        "messages": _write_chats(tmp_path / "spc.jsonl", chats, "messages"),
        "sharegpt": _write_chats(tmp_path / "spc.json", chats, "sharegpt"),
    }
    if input_layout == "reference":
        layout = ReferenceLayout.for_tokenizer(tokenizer)
    else:
        layout = ChatTemplateLayout.for_tokenizer(AutoTokenizer.from_pretrained(plain_chat_model))
    built = {}
    for name, path in files.items():
        args = DataArguments(
            dataset_path=str(path),
            dataset_cache=str(tmp_path / "cache"),
            input_layout=input_layout,
            num_candidates=4,
            validation_split_size=3,
        )
        corpus = prepare_corpus(args, layout, max_positions=256)
        assert detect_format(CorpusFile(path)) == {"csv": "conversations"}.get(name, name)
        built[name] = {
            role: [(r["prefix_ids"], r["candidates"]) for r in corpus.features[role]] for role in ("train", "eval")
        }
    assert len(built["csv"]["train"]) > 100 and built["csv"]["eval"]
    assert built["messages"] == built["csv"] and built["sharegpt"] == built["csv"]


def _dialogs(path) -> list[tuple]:
    corpus = read_corpus(str(path))
    return [(d["persona"], d["turns"]) for split in sorted(corpus) for d in corpus[split]]


def test_export_then_import_gives_back_the_very_dialogs(tmp_path):
    from persona.commands.data import main as data_main

    personachat = tmp_path / "personachat.json"
    dialog = {
        "personality": ["i like cats.", "i am a nurse."],
        "utterances": [
            {"history": ["hi!"], "candidates": ["no.", "hello, i am a nurse."]},
            {"history": ["hi!", "hello, i am a nurse.", "cool! cats?"], "candidates": ["dogs.", "yes, two cats!"]},
        ],
    }
    opener = {"personality": ["i am tall."], "utterances": [{"history": [SILENCE], "candidates": ["hey there!"]}]}
    personachat.write_text(json.dumps({"train": [dialog, opener], "valid": [dialog]}))
    for source in (QUICKSTART / "train_conversations.jsonl", personachat):
        out = tmp_path / f"export-{source.stem}"
        assert data_main(["--dataset_path", str(source), "--export_messages", str(out)]) == 0
        written = sorted(path.name for path in out.iterdir())
        assert written == ([f"{WHOLE_FILE}.jsonl"] if source.suffix == ".jsonl" else ["train.jsonl", "valid.jsonl"])
        back = [(d[0], d[1]) for path in sorted(out.iterdir()) for d in _dialogs(path)]
        original = _dialogs(source)
        # every turn's history and gold come back; the distractors of each dialog's last turn too
        assert [(p, [(t["history"], t["candidates"][-1]) for t in turns]) for p, turns in back] == [
            (p, [(t["history"], t["candidates"][-1]) for t in turns]) for p, turns in original
        ]
        assert [turns[-1]["candidates"] for _, turns in back] == [turns[-1]["candidates"] for _, turns in original]
    record = json.loads((tmp_path / "export-personachat" / "train.jsonl").read_text().splitlines()[1])
    assert record == {
        "messages": [{"role": "system", "content": "i am tall."}, {"role": "assistant", "content": "hey there!"}]
    }


def test_the_rules_of_a_chat_record(tmp_path):
    """Developer messages join the persona, consecutive messages of a speaker join, text parts join, an opening
    assistant answers __ SILENCE __, and a record's candidates or rejected reply are its last turn's distractors."""
    records = [
        {
            "messages": [
                {"role": "developer", "content": "i like cats."},
                {"role": "system", "content": [{"type": "text", "text": "i am a nurse. i live in ohio!"}]},
                {"role": "assistant", "content": "hi!"},
                {"role": "user", "content": "hello."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "what do"}, {"type": "text", "text": "you do?"}],
                },
                {"role": "assistant", "content": "i am a nurse."},
            ],
            "rejected": [{"role": "user", "content": "hello."}, {"role": "assistant", "content": "i drive a truck."}],
        },
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "candidates": ["a"]},
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    first, second = read_corpus(str(path))[WHOLE_FILE]
    assert first["persona"] == ["i like cats.", "i am a nurse.", "i live in ohio!"]
    assert first["turns"] == [
        {"history": [SILENCE], "candidates": ["hi!"]},
        {"history": [SILENCE, "hi!", "hello. what do you do?"], "candidates": ["i drive a truck.", "i am a nurse."]},
    ]
    assert second["persona"] == [] and second["turns"] == [{"history": ["hi"], "candidates": ["a", "yo"]}]


BAD_RECORDS = [
    (
        {"messages": [{"role": "system", "content": "i am a cat."}, {"role": "user", "content": "hi"}]},
        "no assistant message",
    ),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "hi"}]}, "empty message"),
    ({"messages": [{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "hi"}]}, "unknown role"),
    (
        {"messages": [{"role": "tool", "content": "42"}, {"role": "assistant", "content": "hi"}]},
        "tool or function message",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "non-text content",
    ),
    ({"messages": "hello"}, "malformed record"),
]


def test_bad_chat_records_are_named_and_counted_by_reason(tmp_path, caplog):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]}
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [good, *(record for record, _ in BAD_RECORDS)]))
    skips = SkipLog()
    with caplog.at_level("WARNING"):
        dialogs = [d for _, d in corpus_stream(str(path), "auto", "both", skips)]
    assert len(dialogs) == 1
    expected: dict[str, int] = {}
    for _, reason in BAD_RECORDS:
        expected[reason] = expected.get(reason, 0) + 1
    assert skips.reasons() == expected
    assert f"{path}, line 2" in caplog.text and f"{path}, line 4, message 0: unknown role 'narrator'" in caplog.text
    with pytest.raises(DataError, match="no assistant message"):
        list(corpus_stream(str(path), "messages", "both", SkipLog(strict=True)))
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(
        json.dumps(
            [
                {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]},
                {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "f()"}]},
                {"messages": [{"role": "user", "content": "hi"}]},  # not ShareGPT: the file is
            ]
        )
    )
    skips = SkipLog()
    assert not [d for _, d in corpus_stream(str(sharegpt), "auto", "both", skips) if d]
    assert skips.reasons() == {"empty message": 1, "tool or function message": 1, "malformed record": 1}


def test_auto_tells_every_format_apart(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]
    files = {
        "personachat_json": ('{"train": [], "valid": []}', "a.json"),
        "parlai": ("1 your persona: i like cats.\n2 hi\thello\n", "a.txt"),
        "conversations": ("".join(json.dumps(c) + "\n" for c in CONVERSATIONS), "a.jsonl"),
        "messages": (json.dumps({"id": 3, "messages": chat}) + "\n", "b.jsonl"),
        "sharegpt": (json.dumps([{"conversations": [{"from": "human", "value": "hi"}]}]), "b.json"),
    }
    for expected, (text, name) in files.items():
        path = tmp_path / expected / name
        path.parent.mkdir()
        path.write_text(text)
        assert detect_format(CorpusFile(path)) == expected, expected
    listed = write_conversations(tmp_path / "list.json", [])
    listed.write_text(json.dumps(CONVERSATIONS))
    assert detect_format(CorpusFile(listed)) == "conversations"


def test_the_example_corpus_of_the_docs_reads_as_five_dialogs(tmp_path):
    from tests.conftest import REPO

    text = (REPO / "docs" / "data.md").read_text()
    block = text.split("A five-line corpus, `chats.jsonl`:\n\n```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "chats.jsonl"
    path.write_text(block)
    skips = SkipLog(strict=True)
    dialogs = [d for _, d in corpus_stream(str(path), "auto", "both", skips)]
    assert len(dialogs) == 5 and not skips.reasons()
    assert dialogs[3]["turns"][-1]["candidates"] == ["i hate games.", "chess, mostly."]
    assert dialogs[4]["turns"][-1]["history"] == ["hello how tall are you?"]


def test_hub_datasets_and_folders_of_chat_records_keep_their_splits(tmp_path):
    """A saved Hub dataset whose rows have ``messages`` (and one of ShareGPT ``conversations``) reads split by split;
    a folder of ``train.jsonl`` and ``valid.jsonl`` messages files takes the splits of the names."""
    import datasets

    chat = [{"role": "system", "content": "i like cats."}, {"role": "user", "content": "hi"}]
    rows = {
        "train": [{"messages": [*chat, {"role": "assistant", "content": "hello!"}]}],
        "validation": [{"messages": [*chat, {"role": "assistant", "content": "hey."}]}],
    }
    hub = tmp_path / "hub"
    datasets.DatasetDict({split: datasets.Dataset.from_list(r) for split, r in rows.items()}).save_to_disk(str(hub))
    corpus = read_corpus(str(hub))
    assert sorted(corpus) == ["train", "valid"] and corpus["valid"][0]["turns"][0]["candidates"] == ["hey."]
    sharegpt = tmp_path / "sharegpt"
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello!"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"conversations": turns}])}).save_to_disk(str(sharegpt))
    assert read_corpus(str(sharegpt))["train"][0]["turns"] == [{"history": ["hi"], "candidates": ["hello!"]}]
    folder = tmp_path / "folder"
    folder.mkdir()
    for split, split_rows in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in split_rows))
    assert sorted(read_corpus(str(folder))) == ["train", "valid"]
