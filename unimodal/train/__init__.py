"""Training: the DeepSpeed engine, the loop, checkpoints, metrics, launch and curriculum."""
