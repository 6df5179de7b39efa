"""flip_t5x: FLIP (masked language-image pre-training) as a T5X-style extension.

Everything installs from PyPI. Bounds (checked on Python 3.11, 2026-11):
- jax/jaxlib <0.11, flax <0.13: the releases tested here (0.10.2 / 0.12.8); jax.sharding API
  (Mesh, NamedSharding) and flax's linen partitioning are needed, hence the lower bounds.
- tensorflow and tensorflow-text move in lock-step (text 2.21.x needs tensorflow 2.21.x); we depend
  on `tensorflow` because tensorflow-text requires that distribution name anyway.
- seqio 0.0.20 / clu 0.0.12 / orbax-checkpoint 0.12: the versions upstream t5x runs with today.
- jestimator 0.3.3 imports `PartitionSpec` from its old place; `flip_t5x.runtime.optimizers`
  patches that once (amos only).
- tensorboard: clu.metric_writers needs it to write summaries.
- matplotlib: `python -m flip_t5x.plot` draws training curves (Agg backend, no display needed).
The `torch` extra (`pip install -e '.[torch]'`): flip_t5x.pytorch, `python -m flip_t5x.export_torch`
and `python -m flip_t5x.clip_benchmark` (docs/pytorch.md); the core never imports torch. Tested with
torch 2.13.0; scripts/test.sh installs the CPU build (2.13.0+cpu with torchvision 0.28.0) first,
where the index has it, instead of a CUDA build's gigabytes. clip-benchmark pulls open_clip_torch,
transformers and webdataset; safetensors writes the weights.
Accelerators: install jax for your platform on top, e.g. `pip install -U "jax[cuda12]"` (GPU) or
`pip install -U "jax[tpu]"` (TPU), keeping the same jax version bound.
"""
import setuptools

setuptools.setup(
    name="flip_t5x",
    version="0.1.0",
    description="FLIP: Scaling Language-Image Pre-training via Masking, on the T5X/seqio stack",
    package_dir={"": "."},  # `pip install -e .`: a plain path entry, no finder and its notice
    packages=setuptools.find_packages(
        include=["flip_t5x", "flip_t5x.*", "tasks", "tasks.*", "gin_configs", "gin_configs.*"]),
    package_data={"flip_t5x": ["data/assets/*.txt"], "gin_configs": ["*.gin"], "gin_configs.models": ["*.gin"],
                  "gin_configs.runs": ["*.gin"], "gin_configs.demo": ["*.gin"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35,<0.11",
        "jaxlib>=0.4.35,<0.11",
        "flax>=0.10,<0.13",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.11,<0.13",
        "seqio>=0.0.19",
        "clu>=0.0.12",
        "gin-config>=0.5",
        "tensorflow>=2.16,<2.22",
        "tensorflow-text>=2.16,<2.22",
        "tensorflow-datasets>=4.9.6",
        "jestimator>=0.3.3",
        "tensorboard>=2.16",
        "numpy>=1.26",
        "pillow>=10",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8", "pandas", "pyarrow"],
        "torch": ["torch>=2.1", "torchvision", "open_clip_torch>=3.0", "clip-benchmark>=1.6",
                  "safetensors>=0.4"],
    },
)
