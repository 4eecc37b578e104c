"""Models: the dual-head classes and their forward paths, loading into a LoadedModel (persona models and prompted
baselines alike), LoRA, persona's chat template, generation and Bot."""
