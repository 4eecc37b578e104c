"""A training budget in seconds (``max_train_seconds``): the run stops after the first optimizer step that ends past
it, every rank after the same step, and saves and evaluates as a finished run does. Options are compared at the
budget users have (minutes on their machine), not at equal updates: a cheaper update buys more of them."""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

from persona.training.preemption import any_rank

logger = logging.getLogger("persona")


class StopAtTimeBudget(TrainerCallback):
    """Stops training once ``seconds`` of it have passed (counted from the start of the first step)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        spent = time.monotonic() - self.started
        if any_rank(spent >= self.seconds, args.device):
            control.should_training_stop = True
            logger.info(
                "Training stopped at step %d of %d: %.0f s of max_train_seconds %g spent",
                state.global_step,
                state.max_steps,
                spent,
                self.seconds,
            )
        return control
