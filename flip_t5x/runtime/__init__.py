"""Runtime: gin plumbing, partitioning, optimizers, the train step and loop, monitoring, and
upstream-t5x interop (`t5x_interop`). The train state is `flip_t5x.train_state`, checkpoints
`flip_t5x.checkpoints`."""
