"""The chat template saved with a persona model's tokenizer, so that plain transformers can prompt it.

``tokenizer.apply_chat_template`` renders a system message (the persona text), then user and
assistant messages alternating, into the layout of :func:`persona.data.build_inputs`::

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

from persona.data.special_tokens import BOT, PARTNER

_TEMPLATE = """\
{%- set space = "SPACE" -%}
{%- set ns = namespace(previous="system") -%}
{{- bos_token -}}
{%- for message in messages -%}
    {%- if message["role"] == "system" -%}
        {%- if not loop.first -%}
            {{- raise_exception("The system message (the persona) must come first.") -}}
        {%- endif -%}
        {{- space + message["content"] -}}
    {%- elif message["role"] in ["user", "assistant"] -%}
        {%- if message["role"] == ns.previous -%}
            {{- raise_exception("User and assistant messages must alternate.") -}}
        {%- endif -%}
        {%- set ns.previous = message["role"] -%}
        {{- ("PARTNER_TOKEN" if message["role"] == "user" else "BOT_TOKEN") + space + message["content"] -}}
        {%- if loop.last and message["role"] == "assistant" -%}{{- eos_token -}}{%- endif -%}
    {%- else -%}
        {{- raise_exception("Only system, user and assistant messages.") -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {%- if ns.previous == "assistant" -%}
        {{- raise_exception("The last message must be the user's when a reply is asked for.") -}}
    {%- endif -%}
    {{- "BOT_TOKEN" -}}
{%- endif -%}
"""


def persona_chat_template(leading_space: bool) -> str:
    """The Jinja chat template, each text after a space or not (``leading_space``, the model's rule)."""
    space = " " if leading_space else ""
    return _TEMPLATE.replace("SPACE", space).replace("PARTNER_TOKEN", PARTNER).replace("BOT_TOKEN", BOT)


def add_chat_template(tokenizer, leading_space: bool) -> None:
    """Give ``tokenizer`` the persona chat template (saved by ``save_pretrained`` with the tokenizer)."""
    tokenizer.chat_template = persona_chat_template(leading_space)
