r"""Scores a flip_t5x model with CLIP_benchmark (LAION's harness), through its own `eval` command.

  python -m flip_t5x.clip_benchmark --pretrained=flip_vit_l16_laion2b \
      --dataset=wds/imagenet1k --dataset_root=/data/wds_imagenet1k --no_amp
  python -m flip_t5x.clip_benchmark --checkpoint=/runs/flip_b16 \
      --gin_file=gin_configs/models/flip_vit_b16.gin --dataset=cifar10 --dataset_root=/data \
      --task=zeroshot_classification --output=results.json

This binary's flags (--checkpoint, --gin_file, --gin.NAME=VALUE, --pretrained, --vocab_file, ...)
pick the model; every other argument goes to `clip_benchmark eval` unchanged (--dataset,
--dataset_root, --task, --batch_size, --num_workers, --no_amp, --output, --recall_k, ...).
CLIP_benchmark's --model_type, --model and --pretrained are set here: `flip_t5x`, the model gin
file's name, and the release's name or the checkpoint directory's (they name the results).
The model runs as the PyTorch export (`flip_t5x.pytorch`), the images get FLIP's official eval
crop, the texts FLIP's tokenizer; without --no_amp CLIP_benchmark runs it under autocast
(bfloat16 on a CPU). docs/pytorch.md.
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

import os
import sys
from typing import List, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging

from flip_t5x import predictor as predictor_lib
from flip_t5x.pytorch import benchmark
from flip_t5x.pytorch import cli
from flip_t5x.runtime import gin_utils

FLAGS = flags.FLAGS
# CLIP_benchmark's flags that this binary sets itself.
SET_HERE = ("--model", "--model_type", "--pretrained_model")
# This binary's flags (cli.define_flags, --verbose, absl's logging and help); the rest is theirs.
OWN_FLAGS = ("checkpoint", "gin_file", "gin_bindings", "gin_search_paths", "vocab_file",
             "pretrained", "pretrained_cache_dir", "sha256", "verbosity", "v")
_OWN_BOOLEANS = ("verbose", "noverbose", "logtostderr", "alsologtostderr", "help", "helpfull")


def split_args(argv: Sequence[str], own: Sequence[str]) -> Tuple[List[str], List[str]]:
  """(this binary's argv, CLIP_benchmark's arguments): `--NAME[=VALUE]` with NAME in `own` (or
  `--gin.NAME=VALUE`) is ours, with its value where it is the next argument; the rest keep their
  order (CLIP_benchmark's `--dataset a b` included)."""
  ours, theirs = [argv[0]], []
  args = list(argv[1:])
  while args:
    arg = args.pop(0)
    name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
    if name is not None and (name in own or name in _OWN_BOOLEANS or name.startswith("gin.")):
      ours.append(arg)
      if "=" not in arg and name not in _OWN_BOOLEANS and args:
        ours.append(args.pop(0))
    else:
      theirs.append(arg)
  return ours, theirs


def _names(source) -> Tuple[str, str]:
  """CLIP_benchmark's --model and --pretrained: short names without '/' (its output template)."""
  model = os.path.basename(source["gin_files"][-1]).removesuffix(".gin")
  checkpoint = source["pretrained"] or os.path.basename(source["checkpoint"].rstrip("/"))
  return model, checkpoint


def main(argv: Sequence[str], forwarded: Sequence[str]) -> None:
  del argv
  clash = [a for a in forwarded if a.split("=", 1)[0] in SET_HERE]
  if clash:
    raise app.UsageError(f"{clash[0]} is set by this binary (--model_type=flip_t5x); pick the "
                         "model with --checkpoint and --gin_file, or --pretrained")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  predictor, source = cli.load_predictor()
  benchmark.register(benchmark.loader(predictor, cli.preprocess_config(predictor)))
  from clip_benchmark import cli as clip_benchmark_cli  # pylint: disable=g-import-not-at-top
  model, pretrained = _names(source)
  sys.argv = ["clip_benchmark", "eval", f"--model_type={benchmark.MODEL_TYPE}",
              f"--model={model}", f"--pretrained={pretrained}", *forwarded]
  clip_benchmark_cli.main()


if __name__ == "__main__":
  cli.define_flags()
  gin_utils.define_verbose_flag()
  own_argv, clip_benchmark_args = split_args(sys.argv, OWN_FLAGS)
  sys.argv = own_argv
  gin_utils.run(lambda argv: main(argv, clip_benchmark_args), bad_input=predictor_lib.LOAD_ERRORS)
