"""A training budget in seconds (``max_train_seconds``) that the learning-rate schedule follows.

A budget is minutes on the user's machine; a schedule counts updates. Fitted to one machine (so many updates fit the
budget here), a schedule is cut before its end on a slower one and ends with budget unused on a faster one. With a
budget, the schedule the Trainer built (warmup and decay, any ``lr_scheduler_type`` that counts updates) is read at
the larger of the share of its updates done and the share of the budget spent, times its length: a run ends annealed
when its budget ends, on any machine, and when its updates end, if they end first (``max_steps`` is then only a cap).
Warmup set as a share (``warmup_steps: 0.1``) is a share of the budget.

Training stops after the first update that ends past the budget (the last one ran at the rate of the share spent
before it: a linear schedule ends within one update's share of zero), then saves and evaluates as a finished run does.
Every rank reads the same clock (the slowest rank's, agreed after each update), so all of them take the same rate and
stop after the same update. The time spent is part of a checkpoint's ``trainer_state.json``: a resumed run continues
the schedule and the budget where the interrupted one left them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from persona.errors import ConfigError

logger = logging.getLogger("persona")


def slowest_rank(seconds: float, device) -> float:
    """The largest of every rank's ``seconds`` (an all-reduce under ``accelerate launch``; the value itself alone)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = torch.tensor([seconds], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())
    return seconds


def follow_budget(scheduler, spent_share: Callable[[], float], length: int) -> None:
    """Make ``scheduler`` (the Trainer's, built over ``length`` updates) read its schedule at ``max(update,
    spent_share() * length)``: the share of the budget spent moves it forward when updates are slower than their
    share."""
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper, where the Trainer prepared one
    if not isinstance(scheduler, LambdaLR):
        raise ConfigError(
            f"a time budget needs a schedule of updates to follow, and {type(scheduler).__name__} is not one",
            where="lr_scheduler_type",
            fix="use a schedule such as linear, cosine or constant_with_warmup with max_train_seconds.",
        )

    def following(schedule):
        return lambda update: schedule(max(update, spent_share() * length))

    scheduler.lr_lambdas = [following(schedule) for schedule in scheduler.lr_lambdas]


class TimeBudget(TrainerCallback, ExportableState):
    """The schedule follows ``seconds`` of training and training stops when they are spent (see the module); the
    rate of the last update is kept in ``last_learning_rate`` (the first parameter group's)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.spent_before = 0.0  # what the run had spent before this process resumed it
        self.started: float | None = None
        self.share = 0.0  # of the budget, agreed by every rank, at the end of the last update
        self.last_learning_rate: float | None = None

    def spent(self) -> float:
        """Seconds of training so far, resumed runs' included."""
        return self.spent_before + (time.monotonic() - self.started if self.started is not None else 0.0)

    def state(self) -> dict:
        """What a checkpoint keeps (``trainer_state.json``): the budget and the seconds spent."""
        return {"args": {"seconds": self.seconds}, "attributes": {"spent_before": self.spent()}}

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict):  # resumed from a checkpoint: its time counts
            self.spent_before = float(saved["attributes"]["spent_before"])
        self.started = time.monotonic()
        self.share = self.spent_before / self.seconds
        follow_budget(lr_scheduler, lambda: self.share, state.max_steps)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # After the update, before the scheduler sets the next update's rate from the share.
        self.last_learning_rate = float(optimizer.param_groups[0]["lr"])
        self.share = slowest_rank(self.spent(), args.device) / self.seconds

    def on_step_end(self, args, state, control, **kwargs):
        if self.share >= 1.0:
            control.should_training_stop = True
            logger.info(
                "Training stopped at step %d of at most %d: %.0f s of max_train_seconds %g spent, the last update at "
                "learning rate %.3g",
                state.global_step,
                state.max_steps,
                self.share * self.seconds,
                self.seconds,
                self.last_learning_rate,
            )
        return control


def time_budget_of(callbacks) -> TimeBudget | None:
    """The run's :class:`TimeBudget` among a Trainer's ``callbacks`` (``callback_handler.callbacks``), or None."""
    return next((callback for callback in callbacks if isinstance(callback, TimeBudget)), None)


def schedule_progress(state, callbacks) -> float:
    """How far the run's schedule has gone, as the learning rate reads it: the larger of the share of its updates
    done (``state``, the Trainer's) and, with a :class:`TimeBudget` among ``callbacks``, the share of the budget
    spent."""
    budget = time_budget_of(callbacks)
    done = state.global_step / state.max_steps if state.max_steps else 0.0
    return max(done, budget.share if budget is not None else 0.0)
