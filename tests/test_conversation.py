"""One conversation model: the rules of persona.data.conversation, and every place that reads a chat reading it the
same (corpus records in both chat formats, the API's request, the web page's chat, the saved chat template)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from persona.data import build_inputs
from persona.data.chat_records import MESSAGES, SHAREGPT, chat_dialogs
from persona.data.conversation import MessageError, conversation_messages, read_conversation
from persona.data.dialog import SILENCE
from persona.data.reference_template import add_chat_template
from persona.data.special_tokens import add_special_tokens, special_ids
from persona.data.tokenize import encode_texts
from persona.serving.openai_api import APIError, parse_messages
from persona.serving.protocol import Message
from persona.serving.web_page import page_conversation
from tests.conftest import needs_shared

CHAT = [  # a late persona message, the bot first, a speaker twice in a row, text parts
    {"role": "system", "content": "i like cats. i am tall!"},
    {"role": "assistant", "content": "hello there."},
    {"role": "user", "content": " hi. "},
    {"role": "user", "content": [{"type": "text", "text": "how are"}, {"type": "text", "text": " "}, "you?"]},
    {"role": "developer", "content": "i work as a nurse."},
]
PERSONA = ["i like cats.", "i am tall!", "i work as a nurse."]
HISTORY = [SILENCE, "hello there.", "hi. how are you?"]


def test_the_rules_read_a_chat_as_persona_and_history():
    conversation = read_conversation((m["role"], m["content"]) for m in CHAT)
    assert conversation.persona == PERSONA and conversation.history == HISTORY and conversation.awaits_reply
    assert conversation.utterances[0] == ("user", SILENCE)
    nobody = read_conversation([("system", "i am a cat."), ("system", "")])
    assert nobody.persona == ["i am a cat."] and nobody.history == [SILENCE] and nobody.awaits_reply
    answered = read_conversation([("user", "hi"), ("assistant", "yo"), ("assistant", "man")])
    assert answered.history == ["hi", "yo man"] and not answered.awaits_reply


@pytest.mark.parametrize(
    "messages, index, reason",
    [
        ([("user", "hi"), ("assistant", "  ")], 1, "empty message"),
        ([("user", "hi"), ("narrator", "x")], 1, "unknown role"),
        ([("user", [{"type": "image_url", "image_url": {"url": "x"}}])], 0, "non-text content"),
        ([("system", "a"), ("user", 42)], 1, "malformed record"),
    ],
)
def test_a_message_the_rules_cannot_read_is_named(messages, index, reason):
    with pytest.raises(MessageError) as raised:
        read_conversation(messages)
    assert (raised.value.index, raised.value.reason) == (index, reason) and raised.value.fix


def test_a_corpus_record_in_either_format_reads_as_the_rules_say():
    reply = "i am fine, i just got home from the hospital."
    record = {"messages": [*CHAT, {"role": "assistant", "content": reply}]}
    (dialog,) = chat_dialogs(record, "chats.jsonl, line 1", MESSAGES)
    assert dialog["persona"] == PERSONA and dialog["turns"][-1] == {"history": HISTORY, "candidates": [reply]}
    names = {"system": "system", "developer": "system", "user": "human", "assistant": "gpt"}
    sharegpt = {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in record["messages"]]}
    assert chat_dialogs(sharegpt, "chats.json, record 0", SHAREGPT) == [{**dialog, "record": "chats.json, record 0"}]


def test_the_api_reads_a_request_as_the_rules_say():
    assert parse_messages([Message(**m) for m in CHAT]) == (PERSONA, HISTORY)
    assert parse_messages([Message(role="system", content="i like cats.")]) == (["i like cats."], [SILENCE])
    with pytest.raises(APIError, match="the last message must be the user's") as raised:
        parse_messages([Message(**m) for m in [*CHAT, {"role": "assistant", "content": "fine."}]])
    assert raised.value.status == 400 and raised.value.detail.param == "messages"
    with pytest.raises(APIError, match=r"messages\[1\]: the message is empty") as raised:
        parse_messages([Message(role="user", content="hi"), Message(role="user", content=" ")])
    assert raised.value.detail.param == "messages[1]"


def test_the_page_reads_its_chat_as_the_rules_say():
    chat = [{"role": "assistant", "content": "hello there."}, {"role": "user", "content": "hi."}]
    conversation = page_conversation(" ".join(PERSONA), chat, "how are you?")
    assert (conversation.persona, conversation.history) == (PERSONA, HISTORY)
    failed = [*chat, {"role": "assistant", "content": ""}]  # a reply that failed is no utterance
    assert page_conversation("", failed, "how are you?").history == HISTORY


def test_the_saved_chat_template_renders_what_build_inputs_builds_for_the_rules_reading():
    tokenizer = AutoTokenizer.from_pretrained(needs_shared("tokenizers", "gpt2"))
    add_special_tokens(tokenizer)
    add_chat_template(tokenizer, leading_space=True)

    def reference(persona, history, reply=None):
        persona_ids, history_ids = (encode_texts(tokenizer, texts, leading_space=True) for texts in (persona, history))
        reply_ids = encode_texts(tokenizer, [reply], leading_space=True)[0] if reply else []
        ids = special_ids(tokenizer)
        return build_inputs(persona_ids, history_ids, reply_ids, ids, lm_labels=False, with_eos=reply is not None)[
            "input_ids"
        ]

    rendered = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert rendered == reference(PERSONA, HISTORY)
    answered = [*CHAT, {"role": "assistant", "content": "fine."}, {"role": "assistant", "content": "and you?"}]
    rendered = tokenizer.apply_chat_template(answered, tokenize=True, return_dict=False)
    assert rendered == reference(PERSONA, HISTORY, "fine. and you?")
    opening = [{"role": "system", "content": "i like cats."}]
    rendered = tokenizer.apply_chat_template(opening, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert rendered == reference(["i like cats."], [SILENCE])
    for refused, match in [
        ([*CHAT, {"role": "assistant", "content": "fine."}], "last message must be the user's"),
        ([{"role": "user", "content": " "}], "empty user or assistant message"),
        ([{"role": "tool", "content": "42"}], "Only system, developer, user and assistant"),
    ]:
        with pytest.raises(Exception, match=match):
            tokenizer.apply_chat_template(refused, add_generation_prompt=True, tokenize=False)


def test_a_history_written_as_messages_reads_back_as_itself():
    for history in (HISTORY, ["hi", "yo", "how are you?"], ["hi"]):
        messages = conversation_messages(PERSONA, history)
        conversation = read_conversation((m["role"], m["content"]) for m in messages)
        assert (conversation.persona, conversation.history) == (PERSONA, history)
