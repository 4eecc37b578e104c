"""A PNG of the training and evaluation losses, from the Trainer's log history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def plot_losses(log_history: list[dict], path: Path) -> Path | None:
    """Plot loss, lm_loss and mc_loss (training) and eval_loss against the step; None if nothing was logged."""
    series = {
        name: [(entry["step"], entry[name]) for entry in log_history if name in entry]
        for name in ("loss", "lm_loss", "mc_loss", "eval_loss", "eval_lm_loss", "eval_mc_loss")
    }
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        steps, values = zip(*points)
        axis.plot(
            steps,
            values,
            marker="o" if name.startswith("eval") else None,
            linestyle="--" if name.startswith("eval") else "-",
            label=name,
        )
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title("Training and evaluation losses")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
