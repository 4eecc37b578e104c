"""Data: readers into canonical dialogs, the input layout, features, the Arrow cache and the collator."""

from persona.data.collator import PersonaCollator
from persona.data.layout import build_inputs
from persona.data.prepare import PreparedCorpus, prepare_corpus

__all__ = ["PersonaCollator", "PreparedCorpus", "build_inputs", "prepare_corpus"]
