"""Does the persona matter? Each evaluated turn's gold reply scored after its own persona and after others.

For each turn, the gold reply is scored after the turn's own persona and after ``persona_swaps`` other personas of the
same split (the same history; the others drawn with a seeded generator from the distinct personas of the whole split,
not only of the evaluated dialogs, never the turn's own), each as a turn of one candidate in the model's layout:

- ``persona_hits@1``: the share of turns in which the own persona makes the gold reply likeliest by its mean token
  log-likelihood (a tie counts as a miss, as in hits@k; chance is 1 / (swaps + 1));
- ``persona_gain``: the mean over turns of the gold reply's mean token log-likelihood under its own persona minus
  its mean under the others, in nats per token;
- ``persona_mc_hits@1`` and ``persona_mc_gain``: the same by the multiple-choice score, for a model with a trained
  head (the gain in the head's logits).
"""

from __future__ import annotations

import logging
import random

from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from persona.data.input_layouts import GoldTooLong
from persona.data.layout import gold_reply
from persona.model.loading import LoadedModel
from persona.model.scoring import score_candidates

logger = logging.getLogger(__name__)


def swapped_turns(dialogs, swaps: int, seed: int, pool: list[list[str]] | None = None) -> list[dict]:
    """Each turn of ``dialogs`` (in order) with its ``personas``: its own first, then ``swaps`` others drawn with
    ``seed`` from the distinct personas of ``pool`` (by default of the dialogs; all the others where fewer)."""
    dialogs = list(dialogs)
    distinct = sorted({tuple(persona) for persona in pool} if pool else {tuple(d["persona"]) for d in dialogs})
    rng = random.Random(seed)
    turns = []
    for dialog in dialogs:
        own = tuple(dialog["persona"])
        others = [persona for persona in distinct if persona != own]
        for turn in dialog["turns"]:
            drawn = rng.sample(others, min(swaps, len(others)))
            personas = [list(own), *(list(persona) for persona in drawn)]
            turns.append({"history": turn["history"], "gold": gold_reply(turn["candidates"]), "personas": personas})
    return turns


def _examples(loaded: LoadedModel, turn: dict, max_input_length: int) -> list[dict] | None:
    """The turn once per persona, the gold reply its one candidate, as the layout stores it; None where the gold
    reply cannot fit."""
    batch = {"persona": turn["personas"], "turns": [[{"history": turn["history"], "candidates": [turn["gold"]]}]]}
    build = loaded.layout.turn_builder(batch, max_input_length=max_input_length)
    try:
        built = [build(persona, batch["turns"][0][0]) for persona in turn["personas"]]
    except GoldTooLong:
        return None
    return [{"prefix_ids": prefix, "candidates": candidates} for prefix, candidates, _, _ in built]


def _hits_and_gain(rows: list[list[float]]) -> tuple[float, float]:
    """From each turn's scores (own persona first): the share of turns where the own persona scores strictly
    highest, and the mean of its score minus the mean of the others'."""
    hits = [row[0] > max(row[1:]) for row in rows]
    gains = [row[0] - sum(row[1:]) / len(row[1:]) for row in rows]
    return sum(hits) / len(hits), sum(gains) / len(gains)


def persona_use(
    loaded: LoadedModel,
    dialogs,
    swaps: int,
    seed: int,
    max_input_length: int,
    batch_size: int = 16,
    pool: list[list[str]] | None = None,
) -> dict:
    """The persona-use metrics (see the module) of the evaluated ``dialogs``, the others drawn from ``pool`` (the
    whole split's personas; by default the dialogs'), inputs of at most ``max_input_length`` tokens, sharded over
    processes. ``persona_swaps`` is the number of others each turn was scored after (fewer than asked, with a
    warning, where the pool is smaller); ``persona_num_turns`` counts the turns scored (those with another persona to
    swap in and a gold reply that fits)."""
    turns = [turn for turn in swapped_turns(dialogs, swaps, seed, pool) if len(turn["personas"]) > 1]
    drawn = min((len(turn["personas"]) - 1 for turn in turns), default=swaps)
    if drawn < swaps:
        logger.warning(
            "persona_swaps is %d but the split has only %d other personas: each turn is scored after %d, so "
            "persona_hits@1's chance is 1/%d, not 1/%d",
            swaps,
            drawn,
            drawn,
            drawn + 1,
            swaps + 1,
        )
    state = PartialState()
    loaded.model.to(state.device)
    with state.split_between_processes(turns) as shard:
        rows = []
        for turn in tqdm(shard, desc="Persona swaps", unit="turn", disable=not state.is_main_process):
            examples = _examples(loaded, turn, max_input_length)
            if examples is not None:
                scores = score_candidates(loaded, examples, batch_size)
                rows.append(([lm[0] for lm in scores.lm], [mc[0] for mc in scores.mc]))
    rows = gather_object(rows) if state.num_processes > 1 else rows
    if not rows:
        return {"persona_num_turns": 0}
    hits, gain = _hits_and_gain([lm for lm, _ in rows])
    metrics = {"persona_hits@1": hits, "persona_gain": gain, "persona_swaps": drawn, "persona_num_turns": len(rows)}
    if not loaded.prompted:
        mc_hits, mc_gain = _hits_and_gain([mc for _, mc in rows])
        metrics.update({"persona_mc_hits@1": mc_hits, "persona_mc_gain": mc_gain})
    return metrics
