"""The model flags `flip_t5x.export_torch` and `flip_t5x.clip_benchmark` share, and their loading.

`--checkpoint=DIR --gin_file=MODEL.gin` (any checkpoint `flip_t5x.checkpoints` reads), or
`--pretrained=NAME` (a released model, fetched and imported on first use), loaded into a
`FlipPredictor`. A path without a checkpoint, a bad name or a bad vocabulary raises one of
`predictor.LOAD_ERRORS`, which the binaries declare bad input to `gin_utils.run`: one line on
stderr, exit status 2, before anything is written.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Tuple

from absl import app
from absl import flags

from flip_t5x import predictor as predictor_lib
from flip_t5x.pretrained import cli as pretrained_cli
from flip_t5x.pytorch import convert
from flip_t5x.runtime import gin_utils
import tasks

FLAGS = flags.FLAGS


def define_flags() -> None:
  gin_utils.define_gin_flags()
  flags.DEFINE_string("checkpoint", None, "flip_t5x checkpoint: MODEL_DIR (latest step), a "
                      "checkpoint_<step> directory, or a t5x msgpack checkpoint (the release).")
  flags.DEFINE_string("vocab_file", None, "WordPiece vocabulary (default: gin VOCAB_FILE).")
  pretrained_cli.define_flags()  # --pretrained=NAME instead of --checkpoint and --gin_file


def load_predictor() -> Tuple[predictor_lib.FlipPredictor, Dict[str, Any]]:
  """The model the flags name, and where it came from (`source`: recorded with the export)."""
  pretrained_cli.list_if_asked()
  if bool(FLAGS.checkpoint) == bool(FLAGS.pretrained):
    raise app.UsageError("pass one of --checkpoint (with --gin_file) or --pretrained")
  found = pretrained_cli.resolve_from_flags()
  checkpoint = found.checkpoint if found else FLAGS.checkpoint
  gin_files = ([found.gin_file] if found else []) + list(FLAGS.gin_file or [])
  if not gin_files:
    raise app.UsageError("--gin_file (the model's gin file) is required with --checkpoint")
  predictor = predictor_lib.FlipPredictor.from_checkpoint(
      checkpoint, gin_files, gin_bindings=FLAGS.gin_bindings, vocab_file=FLAGS.vocab_file)
  predictor.vocabulary.vocab_size  # pylint: disable=pointless-statement  (exists, readable)
  source = {"checkpoint": os.path.abspath(checkpoint), "gin_files": gin_files,
            "pretrained": found.name if found else None}
  return predictor, source


def preprocess_config(predictor: predictor_lib.FlipPredictor) -> Dict[str, Any]:
  """The transforms' settings: the model's image size and eval pad, the gin-bound train crop."""
  return convert.preprocess_config(predictor.image_size, predictor.eval_pad,
                                   tasks.config().augmentation())
