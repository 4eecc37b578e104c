"""Training and evaluation: the Trainer subclass, the runs of persona-train and persona-eval, checkpoints,
publishing (the model card), the evaluation report and the loss plot."""
