"""Measuring FLIP's real train step: what `python -m flip_t5x.benchmark` runs.

`cases`: synthetic inputs, the model summary and the host environment; `step_timing`: the jitted,
donating train step per mask ratio and the zero-shot image-embedding pass, timed interleaved round
by round, with FLOPs and utilisation against a matmul peak measured in the same run; `memory`:
XLA's memory analysis of the step compiled from abstract shapes (optionally for a described GPU)
and the activations the backward pass keeps; `openclip`: OpenCLIP's PyTorch step on the same
shapes, run in a separate Python, as a reference.
"""
