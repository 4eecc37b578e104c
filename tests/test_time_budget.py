"""A time budget the learning-rate schedule follows: every scheduler of the Trainer read at the larger of the updates'
share and the budget's, a run that ends annealed when its budget ends whatever its update cap, the time spent kept in
a checkpoint and resumed."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import get_scheduler

from persona.commands.train import main as train_main
from persona.errors import ConfigError
from persona.training import time_budget
from persona.training.time_budget import follow_budget
from tests.test_train import _args

SCHEDULES = ("linear", "cosine", "constant_with_warmup", "polynomial", "cosine_with_restarts", "inverse_sqrt")


@pytest.mark.parametrize("kind", SCHEDULES)
def test_a_schedule_is_read_at_the_larger_of_the_updates_share_and_the_budgets(kind):
    def scheduler():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        return optimizer, get_scheduler(kind, optimizer, num_warmup_steps=10, num_training_steps=100)

    _, plain = scheduler()
    expected = []
    for _ in range(101):
        expected.append(plain.get_last_lr()[0])
        plain.step()
    optimizer, following = scheduler()
    share = {"now": 0.0}
    follow_budget(following, lambda: share["now"], 100)
    for update, budget_share in [(1, 0.0), (2, 0.05), (3, 0.4), (4, 0.41), (5, 0.9), (6, 0.9), (95, 0.9), (96, 1.0)]:
        share["now"] = budget_share
        following.last_epoch = update - 1
        following.step()
        virtual = max(update, budget_share * 100)
        lower, upper = expected[int(virtual)], expected[min(int(virtual) + 1, 100)]
        assert min(lower, upper) - 1e-12 <= following.get_last_lr()[0] <= max(lower, upper) + 1e-12, (update, kind)
        if virtual == int(virtual):
            assert following.get_last_lr()[0] == pytest.approx(expected[int(virtual)])
        assert optimizer.param_groups[0]["lr"] == following.get_last_lr()[0]


def test_a_schedule_that_counts_no_updates_is_refused():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    with pytest.raises(ConfigError, match="lr_scheduler_type"):
        follow_budget(plateau, lambda: 0.0, 10)


@pytest.fixture
def one_second_an_update(monkeypatch):
    """The budget's clock advanced by one second at each reading (one a training update, one a checkpoint)."""
    clock = {"now": 0.0}

    def monotonic():
        clock["now"] += 1.0
        return clock["now"]

    monkeypatch.setattr(time_budget.time, "monotonic", monotonic)


def _learning_rates(folder) -> dict[int, float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["learning_rate"] for entry in history if "learning_rate" in entry}


BUDGET = ["--max_train_seconds", "12", "--lr_scheduler_type", "linear", "--warmup_steps", "0.25"]
BUDGET += ["--logging_steps", "1"]


def test_a_run_ends_annealed_when_its_budget_ends_whatever_its_update_cap(tmp_path, one_second_an_update, caplog):
    """Twelve seconds of budget at a second an update: the schedule over a cap of 1,000 updates warms up over the
    first quarter of the budget, decays over the rest and ends at zero at update 12, as a schedule of 12 updates
    would."""
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="persona"):
        assert train_main(_args(out, "--max_steps", "1000", *BUDGET)) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 12 and state["max_steps"] == 1000
    rates = _learning_rates(out)
    peak = 1e-3
    # The rate of update k: the schedule at the budget's share spent when update k-1 ended ((k - 1) / 12).
    for step, rate in rates.items():
        share = (step - 1) / 12
        warm = share / 0.25 if share < 0.25 else (1 - share) / 0.75
        assert rate == pytest.approx(peak * warm, rel=1e-6, abs=1e-12), step
    results = json.loads((out / "train_results.json").read_text())
    assert results["last_learning_rate"] == pytest.approx(peak / 12 / 0.75)
    assert "Training stopped at step 12 of at most 1000: 12 s of max_train_seconds 12 spent" in caplog.text
    capped = tmp_path / "capped"
    assert train_main(_args(capped, "--max_steps", "6", *BUDGET)) == 0  # the updates end first: their own schedule
    assert json.loads((capped / "trainer_state.json").read_text())["global_step"] == 6
    last = json.loads((capped / "train_results.json").read_text())["last_learning_rate"]
    assert last == pytest.approx(peak * (6 - 5) / (6 - 2))  # update 6 of 6 after 2 of warmup


def test_a_resumed_run_continues_the_budget_it_had_spent(tmp_path, one_second_an_update):
    whole = tmp_path / "whole"
    assert train_main(_args(whole, "--max_steps", "1000", "--save_steps", "5", *BUDGET)) == 0
    saved = json.loads((whole / "checkpoint-5" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["TimeBudget"]["attributes"]["spent_before"] == pytest.approx(6.0)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    checkpoint = whole / "checkpoint-5"
    assert train_main(_args(resumed, "--max_steps", "1000", *BUDGET, "--resume_from_checkpoint", str(checkpoint))) == 0
    steps = json.loads((resumed / "trainer_state.json").read_text())["global_step"]
    # 6 s spent before (five updates and the checkpoint's reading), then one second an update: the uninterrupted
    # run's own end and rates, not 12 more updates
    assert steps == json.loads((whole / "trainer_state.json").read_text())["global_step"] == 11
    whole_rates, resumed_rates = _learning_rates(whole), _learning_rates(resumed)
    assert {step: resumed_rates[step] for step in range(6, 12)} == {step: whole_rates[step] for step in range(6, 12)}
