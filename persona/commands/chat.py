"""``persona-chat --model_name_or_path DIR_OR_HUB_ID [--persona "i like cats." --persona ...]``: talk to a persona bot.

With no ``--persona``, one is drawn from the corpus of ``--dataset_path`` (PersonaChat by default, as the
reference's interact.py does; ``persona/resources/quickstart`` offline) and printed. In the prompt loop,
``/persona`` shows the persona, ``/persona TEXT`` sets it (one sentence per ``.``-ended phrase), ``/reset`` clears
the history, ``/quit`` (or Ctrl-D, Ctrl-C) leaves. ``--json`` reads one JSON object per line on stdin
(``{"persona": [...], "history": [...]}``) and writes one per line (``{"reply": "..."}``), for scripts and services.
Either way, the bot's speed (its replies' tokens per second of generating them) is written when it ends.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from transformers import set_seed

from persona.commands.cli import cli_entry, parse_recipe
from persona.configs import DataArguments, ModelArguments
from persona.data.conversation import split_sentences
from persona.data.layout import history_window
from persona.data.personas import draw_persona
from persona.data.tokenize import InvalidText
from persona.errors import Interrupted
from persona.model.decoding import Bot
from persona.model.generation import DecodingArguments
from persona.model.loading import load_for_inference, refuse_training_fields


@dataclass
class ChatArguments:
    """Options of persona-chat besides the shared ones: the model (``ModelArguments``), the corpus a persona is drawn
    from and ``max_history`` (``DataArguments``), the decoding (``DecodingArguments``)."""

    persona: list[str] = field(
        default_factory=list, metadata={"help": "A persona sentence; repeat the flag for more."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the persona draw and of sampling."})
    json: bool = field(default=False, metadata={"help": "JSON lines on stdin and stdout instead of the prompt loop."})


def serve_json(bot: Bot, stdin, stdout) -> None:
    """One request per input line, one ``{"reply": ...}`` (or ``{"error": ...}``) per output line."""
    for number, line in enumerate(stdin, start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            persona, history = request.get("persona", []), request.get("history", [])
            if not all(isinstance(x, str) for x in [*persona, *history]):
                raise ValueError("persona and history must be lists of strings")
            answer = {"reply": bot.reply(persona, history)}
        except (ValueError, AttributeError) as error:
            answer = {"error": f"line {number}: {error}"}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


def chat_loop(bot: Bot, persona: list[str], read=input, write=print) -> None:
    """The prompt loop: history kept, ``/persona``, ``/reset``, ``/quit``, Ctrl-D and Ctrl-C; the bot's speed said
    when it ends."""
    write("Persona: " + " ".join(persona))
    write("Type a message; /persona [TEXT] shows or sets the persona, /reset clears the history, /quit leaves.")
    _conversation(bot, persona, read, write)
    if bot.speed.tokens:
        write(f"({bot.speed})")


def _conversation(bot: Bot, persona: list[str], read, write) -> None:
    history: list[str] = []
    while True:
        try:
            text = read(">>> ").strip()
        except (EOFError, KeyboardInterrupt, Interrupted):  # Ctrl-D, Ctrl-C
            write("")
            return
        if not text:
            continue
        if text == "/quit":
            return
        if text == "/reset":
            history = []
            write("(history cleared)")
            continue
        if text.startswith("/persona"):
            persona = split_sentences(text[len("/persona") :]) or persona
            write("Persona: " + " ".join(persona))
            continue
        try:
            answer = bot.reply(persona, [*history, text])
        except InvalidText as error:
            write(f"(not sent: {error})")
            continue
        history = history_window([*history, text, answer], bot.max_history)
        write(answer)


@cli_entry
def main(argv: list[str]) -> int:
    """Load the model, choose the persona, then chat or serve JSON lines."""
    argv = [token for a in argv for token in (["--do_sample", "false"] if a == "--no_sample" else [a])]
    classes = (ModelArguments, DataArguments, ChatArguments, DecodingArguments)
    (model_args, data_args, args, decoding), _ = parse_recipe(argv, classes, prog="persona-chat", description=__doc__)
    refuse_training_fields(model_args, "persona-chat")
    set_seed(args.seed)
    bot = Bot(load_for_inference(model_args), decoding, data_args.max_history)
    if args.json:
        serve_json(bot, sys.stdin, sys.stdout)
        sys.stderr.write(f"persona-chat: {bot.speed}\n")
        return 0
    chat_loop(bot, args.persona or draw_persona(data_args, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
