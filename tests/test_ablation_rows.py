"""benchmarks/ablation.py's rows are runnable as written: every variant's overrides of the offline recipe parse into
a valid recipe in each mode (at equal minutes, at equal updates), and the SFT peer's rows are one per shape."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from persona.commands.cli import parse_recipe
from persona.configs import RECIPE_CLASSES
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("ablation", REPO / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def _args(**fields) -> argparse.Namespace:
    defaults = {
        "budget_s": 900.0,
        "max_steps": None,
        "sft": True,
        "sft_batch_sizes": [2],
        "sft_learning_rates": [1e-4],
    }
    return argparse.Namespace(**{**defaults, **fields})


@pytest.mark.parametrize("name", list(ablation.VARIANTS))
@pytest.mark.parametrize("mode", [{}, {"max_steps": 40}])
def test_every_variant_is_a_valid_recipe(name, mode, tmp_path):
    argv = [str(ablation.RECIPES / "train.yaml"), *ablation.VARIANTS[name], *ablation.length(_args(**mode))]
    (_, data_args, training_args), _ = parse_recipe([*argv, "--output_dir", str(tmp_path)], RECIPE_CLASSES)
    if mode:
        assert training_args.max_steps == 40 and training_args.max_train_seconds >= 1e12
    else:
        assert training_args.max_train_seconds == 900 and training_args.max_steps == -1
    assert training_args.warmup_steps == 0.1


def test_the_sft_peer_has_one_row_per_shape():
    rows = ablation.sft_rows(_args(sft_batch_sizes=[2, 4, 8], sft_learning_rates=[1e-4, 2e-4]))
    assert len(rows) == 6
    name = f"{ablation.SFT}, 4 conversations an update, lr 0.0002"
    assert rows[name] == [
        "--max_train_seconds",
        "900.0",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "0.0002",
    ]
