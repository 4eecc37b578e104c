"""Models: the dual-head classes and their forward paths, loading into a LoadedModel, LoRA, the chat template,
generation and prompted baselines."""
