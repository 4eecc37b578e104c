"""The web chat page of persona-serve (Gradio): a chat with streamed replies, the bot's persona beside it, a reset.

Its replies come through the same :class:`~persona.serving.batching.ReplyBatcher` as the API's, so a page and many API
clients are answered together.
"""

from __future__ import annotations

import gradio as gr

from persona.data.personas import split_sentences
from persona.model.generation import DecodingArguments
from persona.serving.batching import QueueFull, ReplyBatcher, reply_events

INTRODUCTION = """# Chat with a persona bot
Write to the bot below and press Enter. It answers as the person described on the right: change those sentences
to give it another persona, and **Reset** to start a new conversation."""


def message_text(content) -> str:
    """The text of a chat message as the page sends it back: a string, or a list of parts (``{"type": "text", "text":
    ...}``)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return " ".join(
        part if isinstance(part, str) else str(part.get("text", "")) for part in parts if isinstance(part, (str, dict))
    )


def build_page(
    batcher: ReplyBatcher, decoding: DecodingArguments, persona: list[str], model_id: str, max_message_chars: int
) -> gr.Blocks:
    """The Gradio app: ``persona`` fills the persona box, ``decoding`` decodes the replies; as many conversations are
    answered at once as the batcher generates together, and a message obeys the API's size limit."""

    async def respond(message: str, chat: list[dict], persona_text: str):
        message = message.strip()
        if not message:
            yield "", chat
            return
        if len(message) + len(persona_text) > max_message_chars:
            raise gr.Error(
                f"That message is too long: keep the persona and the message under {max_message_chars:,} characters."
            )
        chat = [*chat, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield "", chat
        history = [message_text(turn["content"]) for turn in chat[:-1]]
        try:
            async for event in reply_events(batcher, split_sentences(persona_text), history, decoding):
                if event.error:
                    raise gr.Error(f"The bot could not answer: {event.error}")
                chat[-1]["content"] += event.delta
                yield "", chat
        except QueueFull:
            raise gr.Error(
                "The bot is busy with many conversations right now: send your message again in a moment."
            ) from None

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
            concurrency_limit=batcher.max_batch_size,
        )
        reset.click(lambda: ([], ""), None, [conversation, message])
    return page
