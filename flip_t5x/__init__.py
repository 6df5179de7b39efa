"""flip_t5x: FLIP (Li et al., 2022) on the T5X/seqio stack, installable from PyPI alone."""
__version__ = "0.1.0"
