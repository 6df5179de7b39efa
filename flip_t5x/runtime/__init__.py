"""Runtime: gin plumbing, partitioning, optimizers, train state, checkpoints, train/eval loops."""
