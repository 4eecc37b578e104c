"""Guidance distillation: each training turn is also built without its persona, the model's logits before each gold
token are taken after both prefixes on every forward path, and the loss (the divergence from the persona-guided
distribution to the model's) is the one computed by hand, is part of what persona-train optimizes, and makes the
model's distribution after its persona depart from its distribution without one."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerState

from persona.commands.train import main as train_main
from persona.configs import CHAT_TEMPLATE_LAYOUT, ModelArguments, PersonaTrainingArguments
from persona.data.collator import PERSONA_FREE, WITH_PERSONA, PersonaCollator
from persona.data.features import tokenize_batch
from persona.data.input_layouts import ChatTemplateLayout, ReferenceLayout
from persona.data.layout import build_candidate, token_types
from persona.errors import ConfigError
from persona.model.dual_heads import DualPath
from persona.model.loading import load_for_training
from persona.training.time_budget import TimeBudget, schedule_progress
from persona.training.trainer import guidance_distillation_loss, persona_token_gain
from tests.conftest import tiny_train_args

PERSONAS = [["i like cats."], ["i am a nurse.", "i live in paris."], ["i play the drums."]]
OPTIONS = {"max_input_length": 128, "permutations": 1, "strict": True, "skip_log": "/dev/null"}


def _batch() -> dict:
    """A ``datasets.map`` batch of three dialogs of two turns (the bot's first reply is the second turn's history)."""
    turns = [
        [
            {"history": [f"hello {i}?"], "candidates": [f"no {i}.", f"fine {i}, and you?"]},
            {"history": [f"hello {i}?", f"fine {i}, and you?", "good."], "candidates": ["ok.", f"bye {i}."]},
        ]
        for i in range(len(PERSONAS))
    ]
    return {"persona": PERSONAS, "turns": turns, "record": [f"record {i}" for i in range(len(PERSONAS))]}


def _examples(layout, **options) -> list[dict]:
    out = tokenize_batch(_batch(), list(range(len(PERSONAS))), layout=layout, **OPTIONS, **options)
    return [dict(zip(out, values)) for values in zip(*out.values())]


def _chat_layout(folder) -> tuple:
    torch.manual_seed(0)
    loaded = load_for_training(ModelArguments(model_name_or_path=str(folder)), input_layout=CHAT_TEMPLATE_LAYOUT)
    return loaded, ChatTemplateLayout.for_tokenizer(loaded.tokenizer)


def test_each_training_turn_is_built_without_its_persona_as_guidance_prompts_it(tokenizer, plain_chat_model):
    """The persona-free prefix is the turn's prefix built after no persona, and with the gold block's first token it
    is the prompt persona guidance pairs with the turn at decoding (``prompt_inputs`` without the persona)."""
    layouts = [ReferenceLayout.for_tokenizer(tokenizer), _chat_layout(plain_chat_model)[1]]
    for layout in layouts:
        batch = _batch()
        build = layout.turn_builder(batch, max_input_length=128)
        examples = _examples(layout, guidance_distillation=True)
        turns = [turn for dialog in batch["turns"] for turn in dialog]
        assert len(examples) == len(turns)
        for example, turn in zip(examples, turns):
            free = example["persona_free_prefix"]
            assert free == build([], turn)[0] and free != example["prefix_ids"]
            prompt = layout.prompt_inputs([], turn["history"], 32, 128)["input_ids"]
            first = build_candidate(example["candidates"][-1], layout.ids)[0] if layout.wraps_candidates else None
            assert list(prompt) == [*free, first if first is not None else example["candidates"][-1][0]]
            gold = len(example["candidates"][-1]) + layout.reply_overhead
            plain = len(example["prefix_ids"]) + sum(len(c) + layout.reply_overhead for c in example["candidates"])
            assert example["length"] == plain + len(free) + gold
        assert all(not e["persona_free_prefix"] for e in _examples(layout))


def _gold_logits(model, prefix: list[int], block: list[int], ids, types: bool) -> torch.Tensor:
    """The logits before each scored token of a gold block after ``prefix``, by a plain LM forward of the whole
    sequence: every token of the block but its first (the reference's speaker token, the template's prompt end)."""
    sequence = torch.tensor([[*prefix, *block]])
    extra = {"token_type_ids": torch.from_numpy(token_types(sequence.numpy(), ids))} if types else {}
    logits = model.forward_full(input_ids=sequence, **extra).logits[0].float()
    return logits[len(prefix) : sequence.shape[1] - 1]


def _guidance_batches(batch: dict) -> tuple[dict, dict]:
    """A collated batch as the trainer splits it: the turns, and the two guidance batches (their keys kept)."""
    guidance = {k: v for k, v in batch.items() if k.startswith((WITH_PERSONA, PERSONA_FREE))}
    turns = {k: v for k, v in batch.items() if k != "gold_copies" and k not in guidance}
    return turns, guidance


def _check_gold_logits(model, layout, examples: list[dict], path: DualPath, types: bool) -> None:
    """The gold tokens' logits of the training forward (with gradients) and the teacher's readings of the two
    guidance batches (without) against plain forward passes."""
    collator = PersonaCollator(
        layout.ids, packed=path is DualPath.PACKED, token_types=types, wrap_candidates=layout.wraps_candidates
    )
    turns, guidance = _guidance_batches(collator(examples))
    assert len(guidance[WITH_PERSONA + "input_ids"]) == len(guidance[PERSONA_FREE + "input_ids"]) == len(examples)
    output = model(**turns, dual_path=path, keep_gold_logits=True)
    blocks = [
        build_candidate(e["candidates"][-1], layout.ids) if layout.wraps_candidates else e["candidates"][-1]
        for e in examples
    ]
    with torch.no_grad():
        own = torch.cat([_gold_logits(model, e["prefix_ids"], b, layout.ids, types) for e, b in zip(examples, blocks)])
        alone = torch.cat(
            [_gold_logits(model, e["persona_free_prefix"], b, layout.ids, types) for e, b in zip(examples, blocks)]
        )
    assert output.gold_logits.shape == own.shape and output.gold_logits.requires_grad
    assert torch.allclose(output.gold_logits, own, atol=1e-4)
    assert output.gold_targets.tolist() == [token for block in blocks for token in block[1:]]
    for read, expected in zip(model.guidance_logits(guidance, path), (own, alone)):
        assert not read.requires_grad  # a target, not trained through
        assert torch.allclose(read, expected, atol=1e-4)


@pytest.mark.parametrize("path", [DualPath.PACKED, DualPath.CLASSIC])
def test_the_gold_tokens_logits_after_the_persona_and_without_it_on_the_reference_layout(path, tiny_model, tokenizer):
    layout = ReferenceLayout.for_tokenizer(tokenizer)
    _check_gold_logits(tiny_model, layout, _examples(layout, guidance_distillation=True), path, types=True)


@pytest.mark.parametrize("path", [DualPath.PACKED, DualPath.FULL_SEQUENCES])
def test_the_gold_tokens_logits_leave_out_the_labelled_history(path, plain_chat_model):
    """In the chat template with label_history, the earlier replies carry LM labels too; the distilled tokens are
    the gold reply's only."""
    loaded, layout = _chat_layout(plain_chat_model)
    examples = _examples(layout, guidance_distillation=True, label_history=True)
    assert any(e["label_spans"] for e in examples)
    _check_gold_logits(loaded.model, layout, examples, path, types=False)


def test_the_loss_is_the_divergence_from_the_teachers_guided_distribution():
    torch.manual_seed(0)
    teacher, alone = torch.randn(5, 11), torch.randn(5, 11)
    student = torch.randn(5, 11, requires_grad=True)
    weight = 1.5
    log_t, log_f = teacher.log_softmax(-1), alone.log_softmax(-1)
    target = (log_t + weight * (log_t - log_f)).log_softmax(-1)  # persona_weight's guidance, normalized
    log_s = student.detach().log_softmax(-1)
    expected = (target.exp() * (target - log_s)).sum(-1).mean()
    loss = guidance_distillation_loss(student, teacher, alone, weight)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    loss.backward()  # the gradient moves the student's distribution toward the guided one, the teacher held
    assert torch.allclose(student.grad, (log_s.exp() - target.exp()) / len(student), atol=1e-6)
    guided = (teacher + weight * (teacher - alone)).clone()  # logits whose softmax is the target
    assert guidance_distillation_loss(guided, teacher, alone, weight).item() == pytest.approx(0.0, abs=1e-5)
    assert guidance_distillation_loss(teacher.clone(), teacher, alone, 0.0).item() == pytest.approx(0.0, abs=1e-6)
    empty = torch.zeros(0, 11)
    assert guidance_distillation_loss(empty, empty, empty, weight).item() == 0.0


def test_the_persona_gain_of_a_gold_token_is_its_log_likelihood_after_the_persona_less_without():
    """By hand: token 2 goes from a third to a half with the persona (+log 1.5), token 1 stays at a third (0), token 0
    goes from a half to a third (-log 1.5)."""
    with_persona = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]).log()
    alone = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [2.0, 1.0, 1.0]]).log()
    gain = persona_token_gain(with_persona, alone, torch.tensor([2, 1, 0]))
    expected = [math.log(0.5 / (1 / 3)), 0.0, math.log((1 / 3) / 0.5)]
    assert gain.tolist() == pytest.approx(expected, abs=1e-6)


def _guidance_logs(folder) -> list[dict]:
    logs = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in logs if "guidance_loss" in entry]


def test_guidance_min_gain_distills_only_the_gold_tokens_the_persona_makes_likelier(tmp_path):
    """The gate at minus infinity keeps every gold token (the same losses as no gate, a share of 1); at 0 it keeps
    the tokens the persona does not make less likely, some and not all (another guidance loss); above every gain,
    none (no guidance loss)."""
    runs = {}
    for name, gate in (("all", None), ("open", "-1e9"), ("zero", "0"), ("shut", "1e9")):
        out = tmp_path / name
        argv = tiny_train_args(out, "--max_train_dialogs", "2", "--max_eval_dialogs", "1", "--eval_num_candidates")
        argv += ["2", "--num_candidates", "2", "--guidance_distillation", "true", "--guidance_weight", "2.0"]
        argv += ["--max_steps", "2", "--logging_steps", "1", "--gradient_accumulation_steps", "1", "--seed", "3"]
        assert train_main(argv + ([f"--guidance_min_gain={gate}"] if gate else [])) == 0
        runs[name] = _guidance_logs(out)
    assert all(len(logs) == 2 for logs in runs.values())
    assert all("guided_token_share" not in entry for entry in runs["all"])
    for ungated, opened in zip(runs["all"], runs["open"]):
        assert opened["guided_token_share"] == 1.0
        assert opened["guidance_loss"] == pytest.approx(ungated["guidance_loss"], abs=1e-4)
    assert all(0.0 < entry["guided_token_share"] < 1.0 for entry in runs["zero"])
    assert runs["zero"][0]["guidance_loss"] != pytest.approx(runs["all"][0]["guidance_loss"], abs=1e-4)
    assert all(entry["guided_token_share"] == 0.0 and entry["guidance_loss"] == 0.0 for entry in runs["shut"])


def test_guidance_start_freezes_the_teacher_and_starts_the_loss_that_far_into_the_schedule(tmp_path, caplog):
    """At guidance_weight 0 the target is the teacher itself: started halfway through 4 updates, the loss is absent
    from the first two, 0 at the third (the teacher is the model as it is then) and above 0 at the fourth; a teacher
    frozen at the start has moved away from the model by the third."""
    runs = {}
    for start in ("0.5", "0"):
        out = tmp_path / start
        argv = tiny_train_args(out, "--max_train_dialogs", "2", "--max_eval_dialogs", "1", "--eval_num_candidates")
        argv += ["2", "--num_candidates", "2", "--guidance_distillation", "true", "--guidance_weight", "0"]
        argv += ["--guidance_start", start, "--max_steps", "4", "--logging_steps", "1", "--lr", "5e-3"]
        argv += ["--gradient_accumulation_steps", "1", "--seed", "3"]
        with caplog.at_level("INFO", logger="persona"):
            assert train_main(argv) == 0
        logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
        runs[start] = {entry["step"]: entry.get("guidance_loss") for entry in logs if "loss" in entry}
    assert runs["0.5"][1] is None and runs["0.5"][2] is None
    assert runs["0.5"][3] == pytest.approx(0.0, abs=1e-4) and runs["0.5"][4] > 0
    assert runs["0"][3] > 1e-3, runs
    assert "Guidance distillation starts at update 3, 50% of the schedule" in caplog.text


def test_schedule_progress_is_the_further_of_updates_and_budget():
    state = TrainerState(global_step=3, max_steps=12)
    budget = TimeBudget(100.0)
    assert schedule_progress(state, []) == 0.25
    budget.share = 0.6
    assert schedule_progress(state, [object(), budget]) == 0.6
    budget.share = 0.1
    assert schedule_progress(state, [budget]) == 0.25


@pytest.mark.parametrize("start", [-0.1, 1.0])
def test_a_guidance_start_outside_the_schedule_is_refused(start):
    with pytest.raises(ConfigError, match="guidance_start"):
        PersonaTrainingArguments(output_dir="unused", guidance_start=start)


def test_a_negative_guidance_weight_is_refused():
    with pytest.raises(ConfigError, match="guidance_weight"):
        PersonaTrainingArguments(output_dir="unused", guidance_weight=-1.0)


def _persona_divergence(folder, tokenizer) -> float:
    """The mean, over the quickstart-shaped turns of :func:`_batch`, of the divergence between the trained model's
    distributions before each gold token after the persona and without it."""
    from tests.conftest import load_folder

    model = load_folder(folder).model.eval()
    layout = ReferenceLayout.for_tokenizer(tokenizer)
    _, guidance = _guidance_batches(PersonaCollator(layout.ids)(_examples(layout, guidance_distillation=True)))
    own, alone = (logits.log_softmax(-1) for logits in model.guidance_logits(guidance, DualPath.PACKED))
    return F.kl_div(alone, own, log_target=True, reduction="batchmean").item()


def test_persona_train_distills_the_teachers_guidance_into_the_model(tmp_path, tokenizer):
    """Logged at every update: the loss optimized is lm_coef x LM + mc_coef x MC + guidance_coef x guidance. Trained
    on the guidance loss alone, the model nears its fixed target (the loss falls, where a target taken from the model
    itself would flee), and its distribution after its persona departs from its distribution without one, as
    guidance makes it, against the same run with the loss off (no loss at all: the model as it started)."""
    runs = {}
    for name, coef in (("distilled", "3.0"), ("off", "0.0")):
        out = tmp_path / name
        argv = tiny_train_args(out, "--max_train_dialogs", "1", "--max_eval_dialogs", "2", "--eval_num_candidates")
        argv += ["2", "--num_candidates", "2", "--guidance_distillation", "true", "--guidance_coef", coef]
        argv += ["--per_device_train_batch_size", "64"]  # every update the whole of one dialog's turns
        argv += ["--guidance_weight", "2.0", "--lm_coef", "0.0", "--mc_coef", "0.0", "--max_steps", "8"]
        argv += ["--logging_steps", "1", "--gradient_accumulation_steps", "1", "--lr", "5e-3", "--seed", "3"]
        assert train_main(argv) == 0
        runs[name] = out
    logs = json.loads((runs["distilled"] / "trainer_state.json").read_text())["log_history"]
    losses = [entry["guidance_loss"] for entry in logs if "guidance_loss" in entry]
    assert len(losses) == 8 and all(loss > 0 for loss in losses)
    for entry in (entry for entry in logs if "guidance_loss" in entry):
        assert entry["loss"] == pytest.approx(3.0 * entry["guidance_loss"], abs=2e-3)
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])
    before = _persona_divergence(runs["off"], tokenizer)
    assert _persona_divergence(runs["distilled"], tokenizer) > 1.5 * before


def test_guidance_distillation_trains_beside_the_persona_contrastive_loss(tmp_path):
    """Both losses in one run, each logged at every update and summed with its weight (the teacher reads each
    turn's gold reply after its persona and after none, the student the swapped personas too)."""
    out = tmp_path / "both"
    argv = tiny_train_args(out, "--max_train_dialogs", "6", "--max_eval_dialogs", "2", "--eval_num_candidates", "2")
    argv += ["--num_candidates", "2", "--guidance_distillation", "true", "--persona_contrast", "1", "--guidance_coef"]
    argv += ["2.0", "--max_steps", "2", "--logging_steps", "1", "--gradient_accumulation_steps", "1"]
    assert train_main(argv) == 0
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logs = [entry for entry in logs if "guidance_loss" in entry and "persona_loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        total = entry["lm_loss"] + entry["mc_loss"] + entry["persona_loss"] + 2.0 * entry["guidance_loss"]
        assert entry["loss"] == pytest.approx(total, abs=2e-3)
