"""The chat template saved with a persona model's tokenizer, so that plain transformers can prompt it.

``tokenizer.apply_chat_template`` renders a chat, read by the rules of :mod:`persona.data.conversation` (the persona
messages' texts, wherever they stand, as the persona; a speaker's consecutive messages as one utterance; text parts
joined; ``__ SILENCE __`` before a bot that speaks first), into the layout of :func:`persona.data.build_inputs`::

    <bos> persona  <speaker2> user  <speaker1> assistant  ...  <speaker2> user  <speaker1>

User messages are the partner's ``<speaker2>``, the bot's (assistant) ``<speaker1>``, as in the reference;
``add_generation_prompt`` ends with ``<speaker1>``; a final assistant message ends with ``<eos>`` (as a training
input does). For byte-level BPE tokenizers each text gets the leading space that
:func:`persona.data.tokenize.encode_texts` gives it, so the rendered ids equal ``build_inputs`` for the same persona
(as one sentence) and history.

What a template cannot carry: token types (the speaker embeddings added at every position) and the
splitting of special-token text typed by a user. ``persona-eval --use_token_types false`` measures the
first; the model card reports it.
"""

from __future__ import annotations

from persona.data.dialog import SILENCE
from persona.data.special_tokens import BOT, PARTNER

_TEMPLATE = """\
{%- set space = "SPACE" -%}
{%- macro text(content) -%}
    {%- if content is string -%}
        {{- content | trim -}}
    {%- else -%}
        {%- set parts = namespace(texts=[]) -%}
        {%- for part in content -%}
            {%- if part is string -%}
                {%- set parts.texts = parts.texts + [part | trim] -%}
            {%- elif part["type"] == "text" -%}
                {%- set parts.texts = parts.texts + [part["text"] | trim] -%}
            {%- else -%}
                {{- raise_exception("Only text content: a part of type " + part["type"] + " is not text.") -}}
            {%- endif -%}
        {%- endfor -%}
        {{- parts.texts | select | join(" ") -}}
    {%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(persona=[], previous="nobody") -%}
{%- for message in messages -%}
    {%- if message["role"] in ["system", "developer"] -%}
        {%- set ns.persona = ns.persona + [text(message["content"])] -%}
    {%- elif message["role"] not in ["user", "assistant"] -%}
        {{- raise_exception("Only system, developer, user and assistant messages.") -}}
    {%- endif -%}
{%- endfor -%}
{{- bos_token -}}
{%- set persona = ns.persona | select | join(" ") -%}
{%- if persona -%}{{- space + persona -}}{%- endif -%}
{%- for message in messages if message["role"] in ["user", "assistant"] -%}
    {%- set said = text(message["content"]) -%}
    {%- if not said -%}
        {{- raise_exception("An empty user or assistant message: drop it or give it text.") -}}
    {%- endif -%}
    {%- if message["role"] == ns.previous -%}
        {{- " " + said -}}
    {%- else -%}
        {%- if ns.previous == "nobody" and message["role"] == "assistant" -%}
            {{- "PARTNER_TOKEN" + space + "SILENCE_TEXT" -}}
        {%- endif -%}
        {{- ("PARTNER_TOKEN" if message["role"] == "user" else "BOT_TOKEN") + space + said -}}
    {%- endif -%}
    {%- set ns.previous = message["role"] -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {%- if ns.previous == "assistant" -%}
        {{- raise_exception("The last message must be the user's when a reply is asked for.") -}}
    {%- endif -%}
    {%- if ns.previous == "nobody" -%}{{- "PARTNER_TOKEN" + space + "SILENCE_TEXT" -}}{%- endif -%}
    {{- "BOT_TOKEN" -}}
{%- elif ns.previous == "assistant" -%}
    {{- eos_token -}}
{%- endif -%}
"""


def persona_chat_template(leading_space: bool) -> str:
    """The Jinja chat template, each text after a space or not (``leading_space``, the model's rule)."""
    space = " " if leading_space else ""
    return (
        _TEMPLATE.replace("SPACE", space)
        .replace("PARTNER_TOKEN", PARTNER)
        .replace("BOT_TOKEN", BOT)
        .replace("SILENCE_TEXT", SILENCE)
    )


def add_chat_template(tokenizer, leading_space: bool) -> None:
    """Give ``tokenizer`` the persona chat template (saved by ``save_pretrained`` with the tokenizer)."""
    tokenizer.chat_template = persona_chat_template(leading_space)
