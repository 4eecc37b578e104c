"""Whether generated replies keep the persona, judged by a natural-language-inference model (``consistency_model``).

Each generated reply is paired with each sentence of its persona, the reply as the premise and the sentence as the
hypothesis (does what the bot said entail, leave open or contradict that fact?), and the NLI model labels the pair:
+1 entailed, 0 neutral, -1 contradicted. As the C-score of Madotto et al. (2019) defines it, a reply's consistency is
the sum over its persona's sentences; persona-eval reports:

- ``consistency``: the mean over replies of that sum (higher is better; 0 for replies that say nothing of the
  persona);
- ``contradiction_rate``: the share of replies that contradict at least one persona sentence;

and, per reply in ``generations.jsonl``, the sentences it contradicts. Any ``AutoModelForSequenceClassification``
whose config names its labels (``entailment``, ``neutral``, ``contradiction``, in any order and case) serves: an
MNLI model, or one trained on Dialogue NLI (Welleck et al., 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from persona.errors import ConfigError, ModelLoadError, first_line

SCORES = {"entailment": 1, "neutral": 0, "contradiction": -1}


@dataclass
class NliJudge:
    """An NLI model, its tokenizer, and the score of each of its label indices (+1, 0, -1)."""

    model: object
    tokenizer: object
    scores: list[int]
    name: str

    @torch.no_grad()
    def judge(self, premises: list[str], hypotheses: list[str], batch_size: int = 64) -> list[int]:
        """The score of each (premise, hypothesis) pair: +1 entailed, 0 neutral, -1 contradicted."""
        labels = []
        for start in range(0, len(premises), batch_size):
            inputs = self.tokenizer(
                premises[start : start + batch_size],
                hypotheses[start : start + batch_size],
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            labels += self.model(**inputs).logits.argmax(-1).tolist()
        return [self.scores[label] for label in labels]


def _label_scores(config, name: str) -> list[int]:
    """The score of each label index, read from the model config's ``id2label``."""
    scores = []
    for index in range(config.num_labels):
        label = str(config.id2label.get(index, "")).lower()
        kind = next((kind for kind in SCORES if label.startswith(kind[:7])), None)
        if kind is None:
            raise ConfigError(
                f"the NLI model's label {index} is '{label}', not entailment, neutral or contradiction",
                where=name,
                fix="use a model whose config names its labels (id2label), as MNLI and Dialogue NLI models do.",
            )
        scores.append(SCORES[kind])
    if sorted(scores) != [-1, 0, 1]:
        raise ConfigError(
            f"the NLI model's labels are {config.id2label}",
            where=name,
            fix="use a model with exactly the three labels entailment, neutral and contradiction.",
        )
    return scores


def load_judge(name: str) -> NliJudge:
    """The NLI model ``name`` (a Hub id or a folder) in eval mode; offline, one line naming it and how to supply it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        model = AutoModelForSequenceClassification.from_pretrained(name).eval()
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load the consistency model '{name}' ({first_line(error)})",
            where="consistency_model",
            fix=f"download it where the Hub is reachable (hf download {name} --local-dir DIR) and pass DIR, or drop "
            "consistency_model.",
        ) from None
    return NliJudge(model, tokenizer, _label_scores(model.config, name), name)


def consistency(judge: NliJudge, records: list[dict]) -> dict:
    """The consistency metrics of the generated ``records`` (``prediction`` and ``persona`` each); each record gains
    ``contradicts``, the persona sentences its reply contradicts."""
    pairs = [(index, sentence) for index, record in enumerate(records) for sentence in record["persona"]]
    scores = judge.judge([records[index]["prediction"] for index, _ in pairs], [sentence for _, sentence in pairs])
    totals = [0] * len(records)
    for record in records:
        record["contradicts"] = []
    for (index, sentence), score in zip(pairs, scores):
        totals[index] += score
        if score < 0:
            records[index]["contradicts"].append(sentence)
    count = max(len(records), 1)
    return {
        "consistency": sum(totals) / count,
        "contradiction_rate": sum(bool(record["contradicts"]) for record in records) / count,
        "consistency_model": judge.name,
    }
