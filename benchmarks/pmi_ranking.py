"""How well a model's own likelihood ranks the gold reply among 20 candidates: by mean token log-likelihood (what
persona-eval reports as lm_hits@1 and what the likelihood prior adds to the multiple-choice score) and by pointwise
mutual information, the candidate's log-likelihood after the conversation minus ``weight`` times its log-likelihood
after an empty conversation (a reply likely anywhere, "i am good, how are you?", gains nothing from the context).

    python benchmarks/pmi_ranking.py [--model DIR] [--gguf_file FILE] [--dialogs 14] [--start_turn 0] [--turns 205]

The turns are the held-out turns of ``recipes/smollm2-135m-offline`` (the shared Synthetic-Persona-Chat CSV, 100
dialogs held out, 20 candidates per turn, ``max_history`` 2): ``--start_turn`` and ``--turns`` pick a range of the
first ``--dialogs`` held-out dialogs (so that a weight chosen on one range is confirmed on another). The default
model is the untrained SmolLM2-135M-Instruct of ``../shared/models``, prompted through its chat template; pass a
folder persona-train wrote (``--model runs/smollm2-135m-offline``) for a fine-tuned one. Chat-template models only
(the empty conversation is the template's generation prompt with no message). A gold reply tied with another
candidate counts as a miss, as in persona-eval. Each turn costs two forward passes of its 20 candidates after a
cached prefix: about 2.2 s a turn for SmolLM2 on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_SMOLLM2 = REPO.parent / "shared" / "models" / "smollm2-135m-instruct"


def candidate_log_likelihoods(model, prefix: list[int], blocks: list[list[int]], pad: int) -> torch.Tensor:
    """The summed log-likelihood of each candidate block after ``prefix`` (the prefix run once, its cache shared),
    the block's first token left out as persona scores it: it is the generation prompt's last token, the same for
    every candidate."""
    from transformers import DynamicCache

    prompt = model(input_ids=torch.tensor([prefix]), use_cache=True)
    count, width = len(blocks), max(map(len, blocks))
    ids = torch.tensor([block + [pad] * (width - len(block)) for block in blocks])
    valid = torch.tensor([[1] * len(block) + [0] * (width - len(block)) for block in blocks])
    cache = DynamicCache(
        ddp_cache_data=[
            (layer.keys.expand(count, -1, -1, -1), layer.values.expand(count, -1, -1, -1))
            for layer in prompt.cache.layers
        ]
    )
    positions = torch.arange(len(prefix), len(prefix) + width)[None].expand(count, -1)
    mask = torch.cat([torch.ones(count, len(prefix), dtype=torch.long), valid], dim=1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache).logits
    first = prompt.logits[0, -1][None, None].expand(count, 1, -1)
    log_probs = torch.cat([first, logits[:, :-1]], dim=1).float().log_softmax(-1)
    scored = valid.clone()
    scored[:, 0] = 0
    return (log_probs.gather(2, ids[..., None])[..., 0] * scored).sum(1)


def gold_first(scores: torch.Tensor, gold: int) -> bool:
    """Whether the gold candidate alone has the highest score (a tie is a miss)."""
    return bool((scores >= scores[gold]).sum() == 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED_SMOLLM2))
    parser.add_argument("--gguf_file", default=None, help="default: SmolLM2's Q4_1 GGUF for the shared model")
    parser.add_argument("--dialogs", type=int, default=14)
    parser.add_argument("--start_turn", type=int, default=0)
    parser.add_argument("--turns", type=int, default=205)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from persona.configs import CHAT_TEMPLATE_LAYOUT, DataArguments, ModelArguments
    from persona.data.prepare import prepare_corpus
    from persona.model.loading import load_for_inference

    gguf = args.gguf_file or ("SmolLM2-135M-Instruct.Q4_1.gguf" if args.model == str(SHARED_SMOLLM2) else None)
    loaded = load_for_inference(ModelArguments(model_name_or_path=args.model, gguf_file=gguf))
    if loaded.layout.name != CHAT_TEMPLATE_LAYOUT:
        sys.exit(f"{args.model} is not a chat-template model: this benchmark needs one")
    data = DataArguments(
        dataset_path=str(REPO.parent / "shared" / "data" / "spc" / "Synthetic-Persona-Chat_valid.csv"),
        dataset_cache=str(REPO / "dataset_cache"),
        validation_split_size=100,
        sampling_seed=0,
        eval_num_candidates=20,
        max_history=2,
        input_layout=CHAT_TEMPLATE_LAYOUT,
        max_eval_dialogs=args.dialogs,
    )
    features = prepare_corpus(data, loaded.layout, max_positions=loaded.max_positions, roles=("eval",)).features
    turns = features["eval"].select(range(args.start_turn, min(args.start_turn + args.turns, len(features["eval"]))))
    empty = loaded.layout.empty_prefix()  # a block starts with the prompt's last token
    rows, start = [], time.perf_counter()
    with torch.no_grad():
        for turn in turns:
            blocks = turn["candidates"]
            lengths = torch.tensor([len(block) - 1 for block in blocks], dtype=torch.float)
            after_context = candidate_log_likelihoods(loaded.model, turn["prefix_ids"], blocks, loaded.ids.pad)
            after_nothing = candidate_log_likelihoods(loaded.model, empty, blocks, loaded.ids.pad)
            rows.append((after_context, after_nothing, lengths))
    gold = len(rows[0][0]) - 1  # the gold reply is the last candidate
    seconds = time.perf_counter() - start
    print(f"{args.model}: held-out turns {args.start_turn}-{args.start_turn + len(rows) - 1}, 20 candidates each")
    print(f"({seconds:.0f} s)\n")
    print("| ranking | hits@1 |\n| --- | --- |")
    scorings = {"mean log-likelihood (lm_hits@1)": lambda c, e, n: c / n}
    for weight in args.weights:
        scorings[f"PMI, weight {weight}"] = lambda c, e, n, w=weight: c - w * e
        scorings[f"PMI per token, weight {weight}"] = lambda c, e, n, w=weight: (c - w * e) / n
    for name, score in scorings.items():
        hits = sum(gold_first(score(*row), gold) for row in rows) / len(rows)
        print(f"| {name} | {hits:.3f} |")


if __name__ == "__main__":
    main()
