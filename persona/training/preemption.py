"""Stopping training cleanly when asked to (preemption): SIGTERM or SIGINT finishes the current optimizer step,
writes a complete checkpoint of it on every rank, and ends the run; a second signal ends it at once.

Cloud spot instances, Slurm's preemption and Kubernetes' evictions send SIGTERM some seconds before the kill. The
checkpoint is the Trainer's own (``control.should_save``), written atomically as ``save_steps`` writes them, so
``--resume_from_checkpoint last`` continues exactly where the run stopped. Under ``accelerate launch`` the ranks
agree on the step through an all-reduce, so that every rank stops after the same one.
"""

from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from persona.errors import signal_name
from persona.interrupts import STOPPING

logger = logging.getLogger("persona")


def any_rank(flag: bool, device) -> bool:
    """Whether ``flag`` is true on any rank (an all-reduce under ``accelerate launch``; the flag itself alone), so
    that every rank takes the same decision after the same step."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = torch.tensor([int(flag)], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())
    return flag


class StopOnSignal(TrainerCallback):
    """A callback that turns SIGTERM and SIGINT into "save this step, then stop" (see the module)."""

    def __init__(self):
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        for signum in STOPPING:
            self._previous[signum] = signal.signal(signum, self._receive)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _receive(self, signum: int, frame) -> None:
        self.received = signum
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
        logger.warning(
            "%s received: finishing this optimizer step, then saving a checkpoint (send it again to stop at once)",
            signal_name(signum),
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is None and any_rank(self.received is not None, args.device):
            self.stopped_at = state.global_step
            control.should_save, control.should_training_stop, control.should_evaluate = True, True, False
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:  # saved at the step; no evaluation nor second save on the way out
            control.should_save, control.should_evaluate = False, False
        return control
