"""What persona decided about a model when it trained it, saved in the model's config and read back in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from persona.data.input_layouts import ReferenceLayout

CONFIG_KEY = "persona"  # the one field of the transformers config that holds the facts
LEGACY_PREFIX = "persona_"  # flat fields (persona_layout, ...): where models saved before CONFIG_KEY hold them


@dataclass(frozen=True)
class PersonaFacts:
    """A persona model's facts: its input ``layout``, whether it was trained with ``token_types``, whether each text is
    encoded after a ``leading_space`` (None: by the tokenizer's own rule, for models saved before persona recorded
    it), whether its multiple-choice score starts from a ``likelihood_prior`` and that prior's PMI weight
    (``prior_pmi_weight``).

    The defaults are a checkpoint of transfer-learning-conv-ai (no facts in its config): the reference layout, token
    types, texts encoded as they are.
    """

    layout: str = ReferenceLayout.name
    token_types: bool = True
    leading_space: bool | None = False
    likelihood_prior: bool = False
    prior_pmi_weight: float = 0.0

    @property
    def prior_needs_context_free(self) -> bool:
        """Whether the multiple-choice score needs each candidate scored after an empty conversation too (a PMI
        prior)."""
        return self.likelihood_prior and bool(self.prior_pmi_weight)

    def save(self, config) -> None:
        """Write these facts into ``config`` (a transformers config, saved with the model)."""
        setattr(config, CONFIG_KEY, dataclasses.asdict(self))

    @classmethod
    def read(cls, config) -> PersonaFacts | None:
        """The facts saved in ``config`` (a transformers config, or the dict of a ``config.json``); None for a model
        persona did not train."""
        values = config if isinstance(config, dict) else vars(config)
        if isinstance(values.get(CONFIG_KEY), dict):
            return cls(**values[CONFIG_KEY])
        legacy = {
            field.name: values[LEGACY_PREFIX + field.name]
            for field in dataclasses.fields(cls)
            if LEGACY_PREFIX + field.name in values
        }
        return cls(**{"leading_space": None, **legacy}) if legacy else None

    @classmethod
    def of(cls, config) -> PersonaFacts:
        """The facts saved in ``config``, or those of a transfer-learning-conv-ai checkpoint where none are."""
        return cls.read(config) or cls()
