"""Readers, features and the cache: the same conversations in every layout, errors that name the record."""

from __future__ import annotations

import csv
import gc
import json
from pathlib import Path

import pytest

from persona.configs import DataArguments
from persona.data import prepare_corpus
from persona.data.input_layouts import ReferenceLayout
from persona.data.readers import SILENCE, WHOLE_FILE
from persona.data.sources import read_corpus
from persona.errors import DataError
from tests.conftest import CONVERSATIONS, QUICKSTART, needs_shared, write_conversations


def _as_seed_json(path: Path) -> Path:
    """The CONVERSATIONS with user 2 as the bot, in the transfer-learning-conv-ai JSON."""
    dialogs = []
    for conversation in CONVERSATIONS:
        u = conversation["utterances"]
        dialogs.append(
            {
                "personality": conversation["personas"][1],
                "utterances": [{"history": u[:i], "candidates": [u[i]]} for i in range(1, len(u), 2)],
            }
        )
    path.write_text(json.dumps({"train": dialogs, "valid": dialogs}))
    return path


def _as_parlai(path: Path) -> Path:
    lines = []
    for conversation in CONVERSATIONS:
        n = 1
        for sentence in conversation["personas"][1]:
            lines.append(f"{n} your persona: {sentence}")
            n += 1
        u = conversation["utterances"]
        for i in range(1, len(u), 2):
            lines.append(f"{n} {u[i - 1]}\t{u[i]}")
            n += 1
    path.write_text("\n".join(lines) + "\n")
    return path


def _as_csv(path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user 1 personas", "user 2 personas", "Best Generated Conversation"])
        for c in CONVERSATIONS:
            text = "\n".join(f"User {i % 2 + 1}: {u}" for i, u in enumerate(c["utterances"]))
            writer.writerow(["\n".join(c["personas"][0]), "\n".join(c["personas"][1]), text])
    return path


def _features(tmp_path, tokenizer, dataset_path, **options):  # one file: its whole content is the training split
    args = DataArguments(
        dataset_path=str(dataset_path),
        dataset_cache=str(tmp_path / "cache"),
        num_candidates=2,
        eval_num_candidates=2,
        **options,
    )
    return prepare_corpus(
        args, ReferenceLayout.for_tokenizer(tokenizer), max_positions=128, roles=("train",)
    ).features["train"]


def test_same_conversations_give_identical_features_in_every_layout(tmp_path, tokenizer):
    layouts = {
        "seed_json": _as_seed_json(tmp_path / "personachat.json"),
        "parlai": _as_parlai(tmp_path / "train_self_original.txt"),
        "csv": _as_csv(tmp_path / "train.csv"),
        "jsonl": write_conversations(tmp_path / "train.jsonl", CONVERSATIONS),
    }
    built = {}
    for name, path in layouts.items():
        side = {} if name in ("seed_json", "parlai") else {"bot_side": "user2"}
        features = _features(tmp_path, tokenizer, path, **side)
        built[name] = [(r["prefix_ids"], r["candidates"]) for r in features]
    assert len(built["seed_json"]) == 4
    for name in ("parlai", "csv", "jsonl"):
        assert built[name] == built["seed_json"], name


def test_both_sides_serve_as_bot_by_default(tmp_path):
    corpus = read_corpus(str(write_conversations(tmp_path / "train.jsonl", CONVERSATIONS)))
    dialogs = corpus[WHOLE_FILE]
    assert [d["persona"] for d in dialogs[:2]] == CONVERSATIONS[0]["personas"]
    # user 1 opens: its first turn answers PersonaChat's "__ SILENCE __", so every history is odd
    assert dialogs[0]["turns"][0] == {"history": [SILENCE], "candidates": ["hi there!"]}
    assert dialogs[0]["turns"][1] == {
        "history": [SILENCE, *CONVERSATIONS[0]["utterances"][:2]],
        "candidates": ["i am a nurse from ohio."],
    }
    assert dialogs[1]["turns"][1] == {
        "history": CONVERSATIONS[0]["utterances"][:3],
        "candidates": ["i live in paris, i play chess."],
    }
    assert all(len(turn["history"]) % 2 for dialog in dialogs for turn in dialog["turns"])
    assert dialogs[1]["record"].endswith("train.jsonl, line 1 (user 2 as the bot)")


def test_held_out_dialogs_take_whole_conversations(tmp_path, tokenizer):
    conversations = [
        {
            "personas": [[f"i am person {i}."], [f"i am partner {i}."]],
            "utterances": [f"hello {i}.", f"hi {i}!", f"bye {i}.", f"ciao {i}."],
        }
        for i in range(10)
    ]
    path = write_conversations(tmp_path / "train.jsonl", conversations)
    args = DataArguments(
        dataset_path=str(path), dataset_cache=str(tmp_path / "cache"), validation_split_size=0.3, eval_num_candidates=2
    )
    dialogs = prepare_corpus(args, ReferenceLayout.for_tokenizer(tokenizer), max_positions=128).dialogs
    seen = {
        role: {u for d in dialogs[role] for t in d["turns"] for u in (*t["history"], t["candidates"][-1])} - {SILENCE}
        for role in ("train", "eval")
    }
    assert len(dialogs["eval"]) == 6 and len(dialogs["train"]) == 14  # 3 of 10 conversations, both sides each
    assert not seen["train"] & seen["eval"]


def test_parlai_candidates_and_dialog_boundaries(tmp_path):
    text = (
        "1 your persona: i like cats.\n"
        "2 hi!\thello!\t\tbye.|hello!|what?\n"
        "3 how are you?\tgood.\t\tgood.|no.|maybe.\n"
        "1 your persona: i am tall.\n"
        "2 hey\tyo\t\tyo|nope\n"
    )
    path = tmp_path / "valid_self_original.txt"
    path.write_text(text)
    (first, second) = read_corpus(str(path))[WHOLE_FILE]
    assert first["persona"] == ["i like cats."]
    assert first["turns"][1] == {
        "history": ["hi!", "hello!", "how are you?"],
        "candidates": ["no.", "maybe.", "good."],
    }
    assert second["turns"] == [{"history": ["hey"], "candidates": ["nope", "yo"]}]


def test_sampled_distractors_are_seeded_and_exclude_the_dialog(tmp_path, tokenizer):
    args = DataArguments(
        dataset_path=str(QUICKSTART), dataset_cache=str(tmp_path / "c"), eval_num_candidates=20, max_eval_dialogs=10
    )
    first = prepare_corpus(args, ReferenceLayout.for_tokenizer(tokenizer), max_positions=256, roles=("eval",)).dialogs[
        "eval"
    ]
    again = prepare_corpus(
        DataArguments(**{**vars(args), "dataset_cache": str(tmp_path / "d")}),
        ReferenceLayout.for_tokenizer(tokenizer),
        max_positions=256,
        roles=("eval",),
    ).dialogs["eval"]
    assert first[:] == again[:]
    for dialog in first:
        own = {u for t in dialog["turns"] for u in t["history"]}
        for turn in dialog["turns"]:
            assert len(turn["candidates"]) == 20 == len(set(turn["candidates"]))
            assert not own & set(turn["candidates"][:-1])


def test_cache_is_reused_and_rebuilt_when_an_option_changes(tmp_path, tokenizer, monkeypatch, caplog):
    path = write_conversations(tmp_path / "train.jsonl", CONVERSATIONS)
    first = _features(tmp_path, tokenizer, path)
    import persona.data.prepare as prepare

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(prepare, "build_features", no_tokenizing)
    with caplog.at_level("INFO", logger="persona"):
        assert _features(tmp_path, tokenizer, path)[:] == first[:]
    assert "from the cache" in caplog.text
    with pytest.raises(AssertionError, match="tokenized again"):
        _features(tmp_path, tokenizer, path, max_history=0)


def test_two_workers_write_the_cache_in_place_and_report_what_each_skipped(tmp_path, tokenizer, caplog):
    """1,200 dialogs (enough for two map workers), an overlong gold reply in each worker's half: both are skipped,
    named and counted, the features are those of one process, in order, and each worker's Arrow file is the cache."""
    conversations = [
        {
            **CONVERSATIONS[i % len(CONVERSATIONS)],
            "utterances": [f"hello number {i}.", *CONVERSATIONS[0]["utterances"]],
        }
        for i in range(1200)
    ]
    for index in (10, 1100):
        conversations[index] = {**conversations[index], "utterances": ["hi", "word " * 300]}
    path = write_conversations(tmp_path / "train.jsonl", conversations)
    alone = _features(tmp_path / "one", tokenizer, path, bot_side="user2", preprocessing_num_workers=1)
    with caplog.at_level("WARNING"):
        corpus = prepare_corpus(
            DataArguments(
                dataset_path=str(path),
                dataset_cache=str(tmp_path / "two" / "cache"),
                num_candidates=2,
                bot_side="user2",
                preprocessing_num_workers=2,
            ),
            ReferenceLayout.for_tokenizer(tokenizer),
            max_positions=128,
            roles=("train",),
        )
    assert corpus.stats["skipped"] == {"gold reply too long": 2}
    for line in (11, 1101):
        assert f"{path}, line {line} (user 2 as the bot), turn 0: the gold reply (" in caplog.text
    shards = sorted(p.name for p in (corpus.cache_path / "features" / "train").iterdir())
    assert shards == ["data_00000_of_00002.arrow", "data_00001_of_00002.arrow"]
    assert corpus.features["train"][:] == alone[:] and len(alone) == 2 * 1198
    assert [f.name for f in (corpus.cache_path / "dialogs" / "train").iterdir()] == ["data.arrow"]
    assert gc.get_freeze_count() == 0  # the heap frozen while preparing is given back to the collector


def test_only_the_splits_the_roles_read_are_read(tmp_path, tokenizer, caplog):
    """A JSON whose 'valid' split holds a broken dialog: training alone never reads it (no warning names it);
    evaluating on it reads it (the broken dialog skipped, named and counted)."""
    path = _as_seed_json(tmp_path / "personachat.json")
    content = json.loads(path.read_text())
    content["valid"].append({"personality": ["a."], "utterances": []})
    path.write_text(json.dumps(content))
    args = DataArguments(
        dataset_path=str(path), dataset_cache=str(tmp_path / "cache"), num_candidates=1, eval_num_candidates=1
    )
    with caplog.at_level("WARNING"):
        training = prepare_corpus(args, ReferenceLayout.for_tokenizer(tokenizer), max_positions=128, roles=("train",))
    assert training.stats["skipped"] == {} and list(training.stats["splits"]) == ["train"]
    assert "valid[" not in caplog.text
    with caplog.at_level("WARNING"):
        both = prepare_corpus(args, ReferenceLayout.for_tokenizer(tokenizer), max_positions=128)
    assert f"Skipped {path}, valid[{len(content['valid']) - 1}]: the dialog has no usable turns" in caplog.text
    assert both.stats["skipped"] == {"dialog without turns": 1}
    assert both.stats["splits"]["eval"]["dialogs"] == len(content["valid"]) - 1


def test_failed_build_leaves_no_cache(tmp_path, tokenizer):
    """A build that fails leaves no cache folder, and the garbage collector as it found it (nothing left frozen)."""
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps(CONVERSATIONS[0]) + "\n" + '{"personas": [["a."], []], "utterances": ["x", "y"]}\n')
    with pytest.raises(DataError):
        _features(tmp_path, tokenizer, bad, strict=True)
    assert not any((tmp_path / "cache").iterdir())
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"train": [{"personality": ["a."], "utterances": [', "invalid JSON at line 1"),
        (b'{"train": [{"personality": ["a."]}]}', "missing field(s) ['utterances']"),
        (
            b'{"train": [{"personality": [], "utterances": [{"history": [], "candidates": ["x"]}]}]}',
            "field 'personality' is empty",
        ),
        (b'{"train": [{"personality": ["a."], "utterances": []}]}', "the dialog has no usable turns"),
        (
            b'{"train": [{"personality": ["a."], "utterances": [{"history": ["hi"], "candidates": []}]}]}',
            "field 'candidates' is empty",
        ),
        (b"1 your persona: i like cats.\n2 hi there\n", "turn without its gold reply"),
        (b"1 your persona: i like cats.\n", "the dialog has no usable turns"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "not UTF-8"),
        (b"", "the file is empty"),
        (b"just some prose, no format at all\n", "cannot tell the corpus format"),
        (b'{"personas": [["a."], ["b."]], "utterances": ["x", "y"]}\n{"personas": [["a."]', "line 2"),
    ],
)
def test_bad_input_names_file_and_record(tmp_path, tokenizer, content, message):
    path = tmp_path / "train_corpus.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        _features(tmp_path, tokenizer, path, strict=True)
    assert message in str(error.value) and str(path) in str(error.value) and "Fix:" in str(error.value)
    assert not any((tmp_path / "cache").glob("*"))


def test_missing_file_and_overlong_reply(tmp_path, tokenizer):
    with pytest.raises(DataError, match="file not found"):
        _features(tmp_path, tokenizer, tmp_path / "absent.json")
    with pytest.raises(DataError, match="hf download google/Synthetic-Persona-Chat --repo-type dataset"):
        _features(tmp_path, tokenizer, tmp_path / "Synthetic-Persona-Chat_valid.csv")  # a known corpus: where it is
    long = {"personas": [["a."], ["b."]], "utterances": ["hi", "word " * 10_000]}
    with pytest.raises(
        DataError,
        match=r"train.jsonl, line 1 \(user 2 as the bot\), turn 0: the gold reply \(20000 tokens\) cannot fit",
    ):
        _features(tmp_path, tokenizer, write_conversations(tmp_path / "train.jsonl", [long]), strict=True)


def test_overlong_history_is_truncated_and_counted(tmp_path, tokenizer):
    long = {"personas": [["i like cats."], ["b."]], "utterances": ["word " * 10_000, "fine.", "ok.", "bye."]}
    args = DataArguments(
        dataset_path=str(write_conversations(tmp_path / "train.jsonl", [long])),
        dataset_cache=str(tmp_path / "c"),
        bot_side="user2",
    )
    corpus = prepare_corpus(args, ReferenceLayout.for_tokenizer(tokenizer), max_positions=128, roles=("train",))
    assert corpus.stats["splits"]["train"]["truncated"] >= 1
    assert max(len(r["prefix_ids"]) + max(map(len, r["candidates"])) + 2 for r in corpus.features["train"]) <= 128


def test_hub_layout_from_a_saved_dataset_folder(tmp_path):
    import datasets

    rows = [
        {
            "personality": ["i like cats."],
            "history": ["hi"],
            "candidates": ["no", "hello"],
            "conv_id": 0,
            "utterance_idx": 0,
        },
        {
            "personality": ["i like cats."],
            "history": ["hi", "hello", "how are you?"],
            "candidates": ["x", "good"],
            "conv_id": 0,
            "utterance_idx": 1,
        },
    ]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hub"))
    (dialog,) = read_corpus(str(tmp_path / "hub"))["valid"]
    assert dialog["persona"] == ["i like cats."] and [t["candidates"][-1] for t in dialog["turns"]] == [
        "hello",
        "good",
    ]


def test_shared_synthetic_persona_chat_csv(tmp_path, tokenizer):
    path = needs_shared("data", "spc", "Synthetic-Persona-Chat_valid.csv")
    corpus = read_corpus(str(path))
    assert list(corpus) == [WHOLE_FILE] and len(corpus[WHOLE_FILE]) == 2000
    assert all(d["persona"] and d["turns"] for d in corpus[WHOLE_FILE])


def _csv_with_bad_rows(path: Path) -> Path:
    """Valid conversations, then an empty conversation, one without speaker tags and one with an overlong reply."""
    _as_csv(path)
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["i like tea.", "i like coffee.", ""])
        writer.writerow(["i like tea.", "i like coffee.", "hello there\nhi, how are you?\nfine thanks"])
        writer.writerow(["i like tea.", "i like coffee.", "User 1: hi\nUser 2: " + "word " * 300 + "\nUser 1: bye"])
    return path


def test_records_no_reader_can_take_are_skipped_and_counted(tmp_path, tokenizer):
    """A lone surrogate, a record nested 1,000 deep, a Synthetic-Persona-Chat conversation that is not text, a CSV
    field over the CSV reader's 128 KiB: each record skipped with its reason, the rest prepared."""
    good = [json.dumps(c) for c in CONVERSATIONS]
    bad = [
        '{"personas": [["a."], ["b."]], "utterances": ["hi \\ud800 there", "x"]}',
        '{"personas": ' + "[" * 1000 + "]" * 1000 + ', "utterances": ["a", "b"]}',
        json.dumps({"user 1 personas": "a.", "user 2 personas": "b.", "Best Generated Conversation": 5}),
    ]
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text("\n".join([*good, *bad]) + "\n")
    table = _as_csv(tmp_path / "chats.csv")
    with open(table, "a", newline="") as handle:
        csv.writer(handle).writerow(["i like tea.", "i like coffee.", "User 1: " + "x" * 140_000])
    expected = {
        jsonl: {"invalid Unicode": 1, "JSON nested too deeply": 1, "conversation not text": 1},
        table: {"unreadable CSV row": 1},
    }
    for path, skipped in expected.items():
        args = DataArguments(
            dataset_path=str(path), dataset_cache=str(tmp_path / f"cache-{path.suffix}"), eval_num_candidates=2
        )
        corpus = prepare_corpus(args, ReferenceLayout.for_tokenizer(tokenizer), max_positions=128)
        assert corpus.stats["skipped"] == skipped and len(corpus.features["train"]) > 0


def test_unusable_records_are_skipped_with_warnings_and_counted(tmp_path, tokenizer, caplog):
    path = _csv_with_bad_rows(tmp_path / "conversations.csv")
    args = DataArguments(
        dataset_path=str(path), dataset_cache=str(tmp_path / "cache"), eval_num_candidates=2, validation_split_size=1
    )
    with caplog.at_level("WARNING"):
        corpus = prepare_corpus(args, ReferenceLayout.for_tokenizer(tokenizer), max_positions=128)
    # rows 4 and 5 are lost whole; row 6 keeps user 1's turns and user 2's turn after "hi" is too long for 128
    # positions
    assert corpus.stats["skipped"] == {"empty conversation": 1, "gold reply too long": 1, "no speaker tags": 1}
    assert sum(split["skipped"].get("gold reply too long", 0) for split in corpus.stats["splits"].values()) == 1
    assert f"Skipped {path}, row 4: the conversation is empty" in caplog.text
    assert f"Skipped {path}, row 5: no line carries a speaker tag" in caplog.text
    assert f"{path}, row 6 (user 2 as the bot), turn 0: the gold reply (" in caplog.text
    assert corpus.stats["dialogs"] == 2 * 3  # two good conversations and row 6, both sides


def test_strict_mode_stops_at_the_first_unusable_record_with_one_line_and_no_cache(tmp_path, capsys):
    from persona.commands.data import main as prepare_main

    path = _csv_with_bad_rows(tmp_path / "conversations.csv")
    argv = [
        "--dataset_path",
        str(path),
        "--tokenizer_name_or_path",
        str(QUICKSTART / "tokenizer"),
        "--dataset_cache",
        str(tmp_path / "cache"),
        "--strict",
        "true",
    ]
    assert prepare_main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: {path}, row 4: the conversation is empty Fix: drop it or complete it."]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    assert (
        prepare_main(argv[:-2] + ["--stats_json", str(tmp_path / "stats.json")]) == 0
    )  # lenient: skipped and counted
    assert json.loads((tmp_path / "stats.json").read_text())["skipped"] == {
        "empty conversation": 1,
        "gold reply too long": 1,
        "no speaker tags": 1,
    }


def test_a_personachat_turn_without_candidates_is_skipped_and_a_split_with_nothing_left_is_an_error(
    tmp_path, tokenizer
):
    good = {"personality": ["i like cats."], "utterances": [{"history": ["hi"], "candidates": ["no.", "hello!"]}]}
    bad_turn = {
        "personality": ["i like dogs."],
        "utterances": [{"history": ["hi"], "candidates": []}, {"history": ["a", "b", "c"], "candidates": ["d"]}],
    }
    path = tmp_path / "personachat.json"
    path.write_text(
        json.dumps(
            {"train": [good, bad_turn, {"personality": ["x."], "utterances": []}], "valid": [{"personality": []}]}
        )
    )
    corpus = prepare_corpus(
        DataArguments(dataset_path=str(path), dataset_cache=str(tmp_path / "c"), eval_num_candidates=2),
        ReferenceLayout.for_tokenizer(tokenizer),
        max_positions=64,
        roles=("train",),
    )
    assert corpus.stats["skipped"] == {"dialog without turns": 1, "turn without candidates": 1}
    assert [len(d["turns"]) for d in corpus.dialogs["train"]] == [1, 1]
    with pytest.raises(
        DataError,
        match=r"no usable dialogs in the 'valid' split \(records skipped, by reason: \{'malformed record': 1\}",
    ):
        prepare_corpus(
            DataArguments(dataset_path=str(path), dataset_cache=str(tmp_path / "c")),
            ReferenceLayout.for_tokenizer(tokenizer),
            max_positions=64,
            roles=("eval",),
        )


def test_a_single_file_is_the_training_split_whatever_its_name_and_is_not_evaluated_on(tmp_path, tokenizer, caplog):
    path = write_conversations(tmp_path / "dev_conversations.jsonl", CONVERSATIONS)  # "dev" in the name: no matter
    args = DataArguments(dataset_path=str(path), dataset_cache=str(tmp_path / "c"), eval_num_candidates=2)
    with caplog.at_level("WARNING"):
        corpus = prepare_corpus(args, ReferenceLayout.for_tokenizer(tokenizer), max_positions=128)
    assert list(corpus.features) == ["train"] and corpus.stats["splits"]["train"]["split"] == WHOLE_FILE
    assert "one file with no splits inside: training on all of it and evaluating on nothing" in caplog.text
    assert "eval_dataset_path" in caplog.text and "validation_split_size" in caplog.text
    evaluated = prepare_corpus(
        args, ReferenceLayout.for_tokenizer(tokenizer), max_positions=128, roles=("eval",)
    )  # what persona-eval asks for
    assert evaluated.stats["splits"]["eval"]["split"] == WHOLE_FILE and len(evaluated.dialogs["eval"]) == 4
    other = write_conversations(
        tmp_path / "other.jsonl", [*CONVERSATIONS[:1], {"personas": [["a."], ["b."]], "utterances": []}]
    )
    both = prepare_corpus(
        DataArguments(**{**vars(args), "eval_dataset_path": str(other)}),
        ReferenceLayout.for_tokenizer(tokenizer),
        max_positions=128,
    )
    assert len(both.dialogs["train"]) == 4 and len(both.dialogs["eval"]) == 2
    assert (
        both.stats["splits"]["eval"]["skipped"] == {"empty conversation": 1}
        and both.stats["splits"]["train"]["skipped"] == {}
    )


@pytest.mark.parametrize("layout", ["jsonl", "json list", "personachat json"])
def test_files_read_in_small_chunks_give_the_same_dialogs_and_locate_bad_bytes(tmp_path, monkeypatch, layout):
    """Reading in 7-byte chunks (characters of two to four bytes cut across chunks) gives the dialogs of one whole
    read; a byte that is not UTF-8 in a later chunk is named by its offset and line."""
    from persona.data import corpus_file

    conversations = [{**c, "utterances": [u + " café 🐈" for u in c["utterances"]]} for c in CONVERSATIONS]
    reference = {
        "train": [
            {
                "personality": c["personas"][1],
                "utterances": [{"history": c["utterances"][:1], "candidates": ["x", "y"]}],
            }
            for c in conversations
        ]
    }
    text = {
        "jsonl": "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations),
        "json list": json.dumps(conversations, ensure_ascii=False, indent=1),
        "personachat json": json.dumps(reference, ensure_ascii=False, indent=1),
    }[layout]
    path = tmp_path / "corpus.json"
    path.write_text(text, encoding="utf-8")
    whole = read_corpus(str(path))
    monkeypatch.setattr(corpus_file, "CHUNK", 7)
    assert read_corpus(str(path)) == whole and sum(map(len, whole.values())) >= 2
    raw = text.encode()
    offset = raw.index("🐈".encode(), len(raw) // 2)
    path.write_bytes(raw[:offset] + b"\xff" + raw[offset + 1 :])
    line = raw[:offset].count(b"\n") + 1
    with pytest.raises(DataError, match=rf"not UTF-8 text \(byte {offset}, line {line}\)"):
        read_corpus(str(path))


def test_persona_data_with_a_tokenizer_alone_takes_its_limit_without_looking_for_a_model(
    tmp_path, monkeypatch, caplog
):
    from persona.commands.data import main as prepare_main
    from persona.model import loading

    monkeypatch.setattr(loading, "base_config", lambda model_args: pytest.fail("looked for a model"))
    argv = ["--dataset_path", str(QUICKSTART), "--tokenizer_name_or_path", str(QUICKSTART / "tokenizer")]
    argv += ["--dataset_cache", str(tmp_path / "cache"), "--stats_json", str(tmp_path / "stats.json")]
    with caplog.at_level("INFO", logger="persona"):
        assert prepare_main(argv) == 0
    assert json.loads((tmp_path / "stats.json").read_text())["max_input_length"] == 512  # its model_max_length
    assert "No model named: inputs cut to the tokenizer's 512 tokens." in caplog.text
    assert "WARNING" not in caplog.text


def test_a_download_cut_short_never_enters_the_cache(tmp_path):
    """A server that announces 1,000 bytes and sends 10: a clear error, nothing in the cache; whole, it is cached."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from persona.data.sources import download
    from persona.errors import DataError

    body = json.dumps({"train": [], "valid": []}).encode()

    class Corpus(BaseHTTPRequestHandler):
        def do_GET(self):
            cut = self.path.endswith("cut.json")
            self.send_response(200)
            self.send_header("Content-Length", "1000" if cut else str(len(body)))
            self.end_headers()
            self.wfile.write(body[:10] if cut else body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Corpus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(DataError, match="the download ended at 10 of its 1,000 bytes"):
            download(f"{base}/cut.json", str(tmp_path))
        assert not [p for p in (tmp_path / "downloads").iterdir()]
        assert download(f"{base}/whole.json", str(tmp_path)).read_bytes() == body
    finally:
        server.shutdown()
        server.server_close()
