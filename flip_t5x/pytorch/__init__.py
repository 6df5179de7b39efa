"""FLIP models in PyTorch, with OpenCLIP's interface (the optional extra: pip install '.[torch]').

    from flip_t5x import pytorch as flip_torch
    model, _, preprocess = flip_torch.create_model_and_transforms("exports/flip_l16")
    tokenizer = flip_torch.get_tokenizer("exports/flip_l16")

  model        FlipCLIP: FLIP's towers as a plain PyTorch module (OpenCLIP's cannot express them)
  transforms   the official eval crop in numpy (fork-safe, unlike TensorFlow), a train crop
  factory      create_model_and_transforms / create_model / get_tokenizer over an export
  convert      JAX parameters -> the PyTorch state dict; the export directory (JAX side)
  benchmark    the CLIP_benchmark model loader (`python -m flip_t5x.clip_benchmark`)
  compat       torchvision beside a CPU build of torch

The core package never imports this one (tests/test_import_directions.py); docs/pytorch.md.
"""
from flip_t5x.pytorch import compat

compat.import_torchvision()  # before anything imports torchvision (open_clip, CLIP_benchmark)

# pylint: disable=g-import-not-at-top,wrong-import-position
from flip_t5x.pytorch.factory import create_model
from flip_t5x.pytorch.factory import create_model_and_transforms
from flip_t5x.pytorch.factory import get_tokenizer
from flip_t5x.pytorch.factory import Tokenizer
from flip_t5x.pytorch.model import FlipCLIP
