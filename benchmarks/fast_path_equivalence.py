"""The packed fast path against the classic path on a device and in a precision: loss and multiple-choice logits.

    python benchmarks/fast_path_equivalence.py [--device cuda] [--dtype float32|bfloat16]

For a tiny GPT-2 and a tiny Llama (random weights, dropout off, the quickstart tokenizer), under SDPA and
eager attention, it runs the same batches of the quickstart corpus (4 candidates per turn) through
``dual_path`` CLASSIC (every candidate a full sequence) and PACKED (one packed row per turn, a block causal
mask), and prints the largest differences of the loss and of the multiple-choice logits. The tolerance is
1e-4 in float32; under bfloat16 autocast each matrix product rounds to 8 bits of mantissa (relative error
2^-8 = 0.4%), and the two paths multiply differently shaped matrices, so their logits may differ by a few
such roundings through the layers: 3e-2 relative to the logits' scale, 2e-2 for the loss. It exits 1 if a
difference exceeds its tolerance (this script is part of benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "persona" / "resources" / "quickstart"
SIZES = {
    "gpt2": {
        "model_type": "gpt2",
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
        "n_positions": 256,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
    },
    "llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
    },
}
TOLERANCES = {"float32": {"loss": 1e-4, "mc_logits": 1e-4}, "bfloat16": {"loss": 2e-2, "mc_logits": 3e-2}}


def differences(family: str, attention: str, device: str, dtype: torch.dtype, batches: int = 4) -> dict[str, float]:
    """The largest relative differences between the CLASSIC and PACKED paths' losses and MC logits."""
    from persona.configs import DataArguments, ModelArguments
    from persona.data import prepare_corpus
    from persona.model.dual_heads import DualPath, collator_for
    from persona.model.loading import load_for_training
    from persona.training.trainer import dual_loss

    torch.manual_seed(0)
    loaded = load_for_training(
        ModelArguments(model_config=SIZES[family], tokenizer_name_or_path=str(QUICKSTART / "tokenizer"))
    )
    model = loaded.model
    model.set_attn_implementation(attention)
    model.to(device).eval()
    data = DataArguments(
        dataset_path=str(QUICKSTART), dataset_cache=str(REPO / "dataset_cache"), num_candidates=4, max_train_dialogs=8
    )
    features = prepare_corpus(data, loaded.layout, max_positions=loaded.max_positions, roles=("train",))
    features = features.features["train"]
    worst = {"loss": 0.0, "mc_logits": 0.0}
    for start in range(0, 4 * batches, 4):
        rows = [features[i] for i in range(start, start + 4)]
        outputs = {}
        for path in (DualPath.CLASSIC, DualPath.PACKED):
            batch = {k: v.to(device) for k, v in collator_for(path, loaded.ids)(rows).items()}
            with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
                output = model(**batch, dual_path=path)
                outputs[path] = (
                    dual_loss(output, batch["mc_labels"], 1.0, 1.0)[0].float(),
                    output.mc_logits.float(),
                    batch["candidate_valid"].bool(),
                )
        (loss_c, logits_c, valid), (loss_p, logits_p, _) = outputs[DualPath.CLASSIC], outputs[DualPath.PACKED]
        scale = logits_c[valid].abs().max().clamp(min=1.0)
        worst["loss"] = max(worst["loss"], ((loss_c - loss_p).abs() / loss_c.abs().clamp(min=1.0)).item())
        worst["mc_logits"] = max(worst["mc_logits"], ((logits_c - logits_p)[valid].abs().max() / scale).item())
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=list(TOLERANCES))
    args = parser.parse_args()
    tolerance, failed = TOLERANCES[args.dtype], False
    print(f"device {args.device}, {args.dtype}; tolerances {tolerance}")
    for family in SIZES:
        for attention in ("sdpa", "eager"):
            worst = differences(family, attention, args.device, getattr(torch, args.dtype))
            verdict = "ok" if all(worst[k] <= tolerance[k] for k in worst) else "OVER TOLERANCE"
            failed |= verdict != "ok"
            print(f"{family:6} {attention:6} loss {worst['loss']:.2e}  mc_logits {worst['mc_logits']:.2e}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
