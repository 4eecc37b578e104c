"""The persona-contrastive loss: each training turn is also built after other personas, the gold reply is scored after
each, and the loss (the cross-entropy of finding it likeliest after its own persona) is the one computed by hand from
the language model's own log-probabilities, on every forward path, and is part of what persona-train optimizes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from persona.commands.train import main as train_main
from persona.data.collator import SWAP_OWNER, PersonaCollator
from persona.data.features import other_personas, tokenize_batch
from persona.data.input_layouts import ReferenceLayout
from persona.data.layout import build_candidate, token_types
from persona.model.dual_heads import DualPath
from persona.training.trainer import _persona_loss, persona_contrast_loss
from tests.conftest import tiny_train_args

PERSONAS = [["i like cats."], ["i am a nurse.", "i live in paris."], ["i play the drums."], ["i like cats."]]


def _batch() -> dict:
    """A ``datasets.map`` batch of four one-turn dialogs (the first and last of the same persona)."""
    return {
        "persona": PERSONAS,
        "turns": [[{"history": [f"hello {i}?"], "candidates": [f"no {i}.", f"fine {i}, and you?"]}] for i in range(4)],
        "record": [f"record {i}" for i in range(len(PERSONAS))],
    }


def _features(tokenizer, contrast: int) -> dict:
    layout = ReferenceLayout.for_tokenizer(tokenizer)
    batch = _batch()
    options = {"layout": layout, "max_input_length": 128, "permutations": 1, "strict": True, "skip_log": "/dev/null"}
    return tokenize_batch(batch, list(range(len(PERSONAS))), persona_contrast=contrast, seed=7, **options)


def test_each_training_turn_is_built_after_other_personas_of_its_batch(tokenizer):
    layout = ReferenceLayout.for_tokenizer(tokenizer)
    batch = _batch()
    build = layout.turn_builder(batch, max_input_length=128)
    out = _features(tokenizer, 2)
    for turn, persona in enumerate(PERSONAS):
        others = other_personas(PERSONAS, turn, 2, 7 * 1_000_003 + turn)
        assert len(others) == 2 and persona not in others and len({tuple(o) for o in others}) == 2
        expected = [build(other, batch["turns"][turn][0])[0] for other in others]
        assert out["persona_swaps"][turn] == expected
        assert out["prefix_ids"][turn] not in expected
        gold = len(out["candidates"][turn][-1]) + layout.reply_overhead
        plain = len(out["prefix_ids"][turn]) + sum(len(c) + layout.reply_overhead for c in out["candidates"][turn])
        assert out["length"][turn] == plain + sum(len(swap) + gold for swap in expected)
    # asked for more than there are: the two others, never the own persona's copy in dialog 3
    assert sorted(map(tuple, other_personas(PERSONAS, 0, 5, 1))) == sorted(map(tuple, PERSONAS[1:3]))
    assert _features(tokenizer, 0)["persona_swaps"] == [[]] * len(PERSONAS)


def _mean_log_likelihood(model, prefix: list[int], reply: list[int], ids) -> float:
    """The reply's mean token log-likelihood after ``prefix`` by a plain LM forward of the whole sequence: every
    token of ``<speaker1> reply <eos>`` but the speaker token, as the dual loss labels the gold reply."""
    candidate = build_candidate(reply, ids)
    sequence = torch.tensor([[*prefix, *candidate]])
    types = torch.from_numpy(token_types(sequence.numpy(), ids))
    logits = model.forward_full(input_ids=sequence, token_type_ids=types).logits[0].float()
    log_probs = F.log_softmax(logits[:-1], dim=-1)
    targets = sequence[0, 1:]
    positions = range(len(prefix) + 1, sequence.shape[1])  # the reply's tokens and the <eos>
    return torch.stack([log_probs[p - 1, targets[p - 1]] for p in positions]).mean().item()


@pytest.mark.parametrize("path", [DualPath.PACKED, DualPath.CLASSIC])
def test_the_persona_loss_is_the_cross_entropy_of_the_own_persona_by_the_replys_likelihood(
    path, tiny_model, tokenizer
):
    layout = ReferenceLayout.for_tokenizer(tokenizer)
    out = _features(tokenizer, 2)
    examples = [
        {name: out[name][turn] for name in ("prefix_ids", "candidates", "label_spans", "persona_swaps")}
        for turn in range(len(PERSONAS))
    ]
    collator = PersonaCollator(layout.ids, packed=path is DualPath.PACKED)
    batch = collator(examples)
    assert batch[SWAP_OWNER].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    owner = batch.pop(SWAP_OWNER)
    with torch.no_grad():
        output = tiny_model(**{k: v for k, v in batch.items() if k != "gold_copies"}, dual_path=path)
        loss = _persona_loss(output, batch["mc_labels"], owner).item()
        expected = []
        for example in examples:
            gold = example["candidates"][-1]
            own = _mean_log_likelihood(tiny_model, example["prefix_ids"], gold, layout.ids)
            others = [_mean_log_likelihood(tiny_model, swap, gold, layout.ids) for swap in example["persona_swaps"]]
            expected.append(-F.log_softmax(torch.tensor([own, *others]), dim=0)[0].item())
    assert loss == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    trained = tiny_model(**{k: v for k, v in batch.items() if k != "gold_copies"}, dual_path=path)
    assert trained.persona_swap_nll_sum.requires_grad  # the likelihood after other personas is trained, not a baseline


def test_turns_without_other_personas_take_no_part_in_the_loss():
    own = torch.tensor([-1.0, -2.0, -3.0])
    swapped = torch.tensor([-2.0, -1.5, -4.0])
    owner = torch.tensor([0, 0, 2])  # turn 1 has no swaps; turn 0 has two, turn 2 one
    turn0 = -F.log_softmax(torch.tensor([-1.0, -2.0, -1.5]), dim=0)[0]
    turn2 = -F.log_softmax(torch.tensor([-3.0, -4.0]), dim=0)[0]
    assert persona_contrast_loss(own, swapped, owner).item() == pytest.approx(((turn0 + turn2) / 2).item())


def test_persona_train_optimizes_the_persona_loss_with_its_coefficient(tmp_path):
    """Logged at every update: the loss optimized is lm_coef x LM + mc_coef x MC + persona_coef x persona."""
    out = tmp_path / "run"
    argv = tiny_train_args(out, "--max_train_dialogs", "12", "--max_eval_dialogs", "2", "--eval_num_candidates", "4")
    argv += ["--num_candidates", "2", "--persona_contrast", "2", "--persona_coef", "3.0", "--lm_coef", "2.0"]
    argv += ["--max_steps", "3", "--logging_steps", "1", "--gradient_accumulation_steps", "1", "--lr", "1e-3"]
    assert train_main(argv) == 0
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "persona_loss" in e]
    assert len(logs) == 3
    for entry in logs:
        total = 2.0 * entry["lm_loss"] + entry["mc_loss"] + 3.0 * entry["persona_loss"]
        assert entry["loss"] == pytest.approx(total, abs=2e-3)
        assert entry["persona_loss"] > 0.5  # log(3) at chance: a tiny untrained model is near it
