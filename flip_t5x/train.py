r"""FLIP pre-training and unmasked tuning with t5x.train's command line and gin vocabulary.

  python -m flip_t5x.train --gin_file=gin_configs/flip_vit_l.gin \
      --gin.MODEL_DIR=\"/path/to/run\" --gin.TRAIN_DATA_PATTERN=\"/data/laion/*.tfrecord\"

The loop (resume, INITIAL_CHECKPOINT_PATH, periodic eval) is `flip_t5x.runtime.train_loop.train`,
which gin files call `train_script.train`; this module is its command line (t5x.train's flags).
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

from typing import Sequence

from absl import flags
from absl import logging
import jax

from flip_t5x import checkpoints
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import train_loop
from flip_t5x.runtime import trainer as trainer_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """t5x.train's flags: gin files/bindings/search paths and multi-process set-up."""
  gin_utils.define_gin_flags()
  flags.DEFINE_bool("multiprocess_gpu", False,
                    "initialise jax.distributed (t5x.train's flag); without the three flags below "
                    "jax detects the cluster itself (SLURM, Open MPI, Cloud TPU, ...)")
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 for jax.distributed (multi-process runs)")
  flags.DEFINE_integer("process_count", None, "number of processes (jax.distributed)")
  flags.DEFINE_integer("process_index", None, "this process's index (jax.distributed)")
  flags.DEFINE_integer("initialization_timeout", None,
                       "seconds jax.distributed waits for every process (default: jax's)")


def _maybe_initialize_distributed() -> None:
  """jax.distributed for a multi-process run: given a coordinator, or the cluster's own."""
  if not (FLAGS.multiprocess_gpu or FLAGS.coordinator_address):
    return
  timeout = {} if FLAGS.initialization_timeout is None else {
      "initialization_timeout": FLAGS.initialization_timeout}
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.process_count,
                             process_id=FLAGS.process_index, **timeout)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app_usage_error(f"unexpected arguments: {argv[1:]}")
  configured_train = train_loop.register_train_for_gin()
  gin_utils.parse_gin_flags(FLAGS.gin_search_paths, FLAGS.gin_file,
                            [train_loop.FLIP_ONLY_BINDINGS, *FLAGS.gin_bindings])
  _maybe_initialize_distributed()
  # A value a configurable rejects while gin builds train()'s arguments (MASK_RATIO = 1.5 in
  # FlipModel) is a configuration error, raised before anything is compiled.
  gin_utils.call_configured(train_loop.train, configured_train)


def app_usage_error(message: str) -> Exception:
  from absl import app  # pylint: disable=g-import-not-at-top
  return app.UsageError(message)


if __name__ == "__main__":
  define_flags()
  # INITIAL_CHECKPOINT_PATH without a checkpoint, or one (or MODEL_DIR's) of another model: bad
  # input, status 2; a loss that stopped being finite: status 3. gin_utils.run: one line each.
  gin_utils.run(main, bad_input=(checkpoints.NoCheckpointError, checkpoints.CheckpointShapeError),
                exit_status={trainer_lib.NonFiniteLossError: 3})
