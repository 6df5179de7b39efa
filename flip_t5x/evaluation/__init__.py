"""Evaluation as library code: zero-shot classification, retrieval, and the seqio metric functions.

`encoder` jits a FlipModel's unmasked towers once and runs them over padded fixed-size batches;
`zeroshot` and `retrieval` score its embeddings (pure numpy) and stream seqio tasks through it;
`metrics` are the same scores as seqio metric functions for upstream `t5x.eval`; `datasets`
reads eval splits. Used by training's periodic zero-shot eval, the `flip_t5x.eval` binary,
`FlipPredictor` and the benchmark's eval rate.
"""


class EvalError(ValueError):
  """A configuration or input problem of an eval; binaries report it in one line, no traceback."""
