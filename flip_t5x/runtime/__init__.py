"""Runtime: gin plumbing, partitioning, optimizers, train state, the train step and loop, monitoring,
and upstream-t5x interop (`t5x_interop`). Checkpoints are `flip_t5x.checkpoints`."""
