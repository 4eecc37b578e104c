"""The web chat page of persona-serve (Gradio): a chat with streamed replies, the bot's persona beside it, a reset.

Its replies come from the same :class:`~persona.serving.engine.Engine` as the API's, so a page and many API
clients are answered together, and a message obeys the API's rules before it reaches the engine: the size limit,
the context check (a persona and message too long for the model's positions is a message on the page) and the queue
bound (Gradio's own queue holds at most as many events as the engine's).
"""

from __future__ import annotations

import gradio as gr

from persona.data.conversation import Conversation, MessageError, message_text, read_conversation
from persona.model.generation import DecodingArguments
from persona.serving.context import ContextTooLong, ControlTextRefused
from persona.serving.engine import Engine, QueueFull, WorkerStopped, reply_events

QUEUE_POLL_S = 0.05  # how often Gradio's queue, while free, looks for a page message waiting to start
PROGRESS_POLL_S = 0.1  # how often it looks for progress to send (the page reports none)

INTRODUCTION = """# Chat with a persona bot
Write to the bot below and press Enter. It answers as the person described on the right: change those sentences
to give it another persona, and **Reset** to start a new conversation."""


def page_conversation(persona_text: str, chat: list[dict], message: str) -> Conversation:
    """The persona box, the page's chat and the new message as one conversation, by the rules of
    :mod:`persona.data.conversation`; a bot message left empty (a reply that failed) is no utterance, so the user's
    messages on either side of it are one, as they would be had it never been shown."""
    said = [
        (turn["role"], turn["content"]) for turn in chat if turn["role"] == "user" or message_text(turn["content"])
    ]
    return read_conversation([("system", persona_text), *said, ("user", message)])


def responder(engine: Engine, decoding: DecodingArguments, max_message_chars: int):
    """The page's answer to a message (an async generator of the message box's and the chat's new values): the
    persona and the message together at most ``max_message_chars`` characters and within the model's positions, the
    engine's queue not full, else a :class:`gradio.Error` that says so on the page, before the engine sees it."""

    async def respond(message: str, chat: list[dict], persona_text: str):
        message = message.strip()
        if not message:
            yield "", chat
            return
        if len(message) + len(persona_text) > max_message_chars:
            raise gr.Error(
                f"That message is too long: keep the persona and the message under {max_message_chars:,} characters."
            )
        try:
            conversation = page_conversation(persona_text, chat, message)
        except MessageError as error:
            raise gr.Error(f"The conversation cannot be read: {error.what}. Reset it.") from None
        persona, history = conversation.persona, conversation.history
        try:
            engine.check_context(persona, history, decoding.max_length)
        except ContextTooLong as error:
            raise gr.Error(
                f"The persona and your message are too long for this bot ({error.prompt_tokens} tokens, and it "
                f"keeps {error.reply_budget} for its reply out of {error.positions}): shorten them."
            ) from None
        except ControlTextRefused as error:
            raise gr.Error(f"This bot cannot take that message: {error}. Remove it.") from None
        chat = [*chat, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield "", chat
        try:
            async for event in reply_events(engine, persona, history, decoding):
                if event.error:
                    raise gr.Error(f"The bot could not answer: {event.error}")
                chat[-1]["content"] += event.delta
                yield "", chat
        except QueueFull:
            raise gr.Error(
                "The bot is busy with many conversations right now: send your message again in a moment."
            ) from None
        except WorkerStopped:
            raise gr.Error("The bot has stopped; the server is restarting. Try again shortly.") from None

    return respond


def build_page(
    engine: Engine, decoding: DecodingArguments, persona: list[str], model_id: str, max_message_chars: int
) -> gr.Blocks:
    """The Gradio app: ``persona`` fills the persona box, ``decoding`` decodes the replies; as many conversations are
    answered at once as the engine decodes together, and a message obeys the API's rules (:func:`responder`)."""
    respond = responder(engine, decoding, max_message_chars)

    with gr.Blocks(title=f"persona: {model_id}") as page:
        gr.Markdown(INTRODUCTION)
        with gr.Row():
            with gr.Column(scale=3):
                conversation = gr.Chatbot(label=model_id, height=460, placeholder="The conversation appears here.")
                message = gr.Textbox(
                    placeholder="Say something and press Enter", show_label=False, autofocus=True, submit_btn=True
                )
            with gr.Column(scale=2):
                persona_box = gr.Textbox(
                    value=" ".join(persona),
                    lines=8,
                    label="The bot's persona",
                    info="A few short sentences in the first person.",
                )
                reset = gr.Button("Reset the conversation", variant="secondary", size="sm")
        message.submit(
            respond,
            [message, conversation, persona_box],
            [message, conversation],
            concurrency_limit=engine.max_batch_size,
        )
        reset.click(lambda: ([], ""), None, [conversation, message])
    page.queue(max_size=engine.queue_limit or None)
    poll_slowly(page)
    return page


def poll_slowly(page: gr.Blocks) -> None:
    """Make the queue of ``page`` look for waiting messages every :data:`QUEUE_POLL_S` and for progress every
    :data:`PROGRESS_POLL_S` while it is free, not every 1 and 10 ms as Gradio does: each look takes the event loop's
    thread, and with it Python's lock, away from the decoding worker (a step of one row of persona's own engine took
    38-42 ms in the server with Gradio's polling, 34 ms alone: docs/serving.md, "Throughput"). A page message starts
    at most :data:`QUEUE_POLL_S` later."""
    page._queue.sleep_when_free = QUEUE_POLL_S
    page._queue.progress_update_sleep_when_free = PROGRESS_POLL_S
