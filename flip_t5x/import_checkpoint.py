r"""Imports an official FLIP release checkpoint into a flip_t5x checkpoint.

  python -m flip_t5x.import_checkpoint --source=/path/to/flip_base_checkpoint \
      --gin_file=gin_configs/models/flip_vit_b16.gin --output=/tmp/flip_b16 [--step=N] [--dry_run]

`--source` is the official release (t5x's legacy msgpack checkpoint: a `checkpoint_<step>/`
directory, its `checkpoint` file, or a directory of them, the latest step taken, as FLIP's own
restore does; read by `flip_t5x.checkpoints.msgpack`), or any other checkpoint
`flip_t5x.checkpoints.locate` reads (t5x.train's orbax layout, msgpack with this project's names,
an earlier flip_t5x layout), whose parameters are checked and copied.

Only `target` (the parameters) is read; the optimizer state is ignored. The release's names are
mapped by `flip_t5x.checkpoints.release` (every shape checked against the gin model first; the
fixed image position table checked, not copied). The result is written with
`flip_t5x.checkpoints.save_params` in t5x's orbax layout. (`flip_t5x.eval`,
`FlipPredictor.from_checkpoint` and `INITIAL_CHECKPOINT_PATH` also read the release directly,
through the same mapping; importing checks and converts it once.)
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

from typing import Sequence

from absl import app
from absl import flags

from flip_t5x import checkpoints
from flip_t5x.checkpoints import importer
from flip_t5x.checkpoints import release
from flip_t5x.data import vocabulary as vocabulary_lib
from flip_t5x.runtime import gin_utils
import tasks

FLAGS = flags.FLAGS


def _define_flags() -> None:
  if "gin_file" not in FLAGS:
    gin_utils.define_gin_flags()
  flags.DEFINE_string("source", None, "Official FLIP checkpoint: a checkpoint_<step> dir, its "
                      "'checkpoint' file, or a dir of checkpoint_<step> dirs (latest is used).")
  flags.DEFINE_string("output", None, "Where to write the flip_t5x checkpoint.")
  flags.DEFINE_integer("step", None, "Step to record (default: the checkpoint's own step).")
  flags.DEFINE_bool("dry_run", False, "Check and print the mapping; write nothing.")


def main(argv: Sequence[str]) -> None:
  del argv
  if not FLAGS.source:
    raise app.UsageError("--source is required")
  if not FLAGS.output and not FLAGS.dry_run:
    raise app.UsageError("--output is required (or pass --dry_run)")
  model = gin_utils.parse_gin_flags_for_model(FLAGS.gin_search_paths, FLAGS.gin_file,
                                              FLAGS.gin_bindings)
  # The official models were trained on FLIP's vocabulary: any other (VOCAB_FILE) is a warning.
  vocabulary_lib.warn_unless_official_vocabulary(tasks.config().vocabulary().vocab_file,
                                                 "import_checkpoint")
  if FLAGS.dry_run:
    for e in release.mapping_table(model):
      print(f"{e.official} {e.official_shape} -> {e.ours} {e.our_shape}")
  _, step = importer.import_checkpoint(FLAGS.source, model,
                                       None if FLAGS.dry_run else FLAGS.output, FLAGS.step)
  print(f"imported {FLAGS.source} (step {step})"
        + ("" if FLAGS.dry_run else f" -> {FLAGS.output}/checkpoint_{step}"))


if __name__ == "__main__":
  _define_flags()
  gin_utils.run(main, bad_input=checkpoints.READ_ERRORS)  # the message is the whole story
