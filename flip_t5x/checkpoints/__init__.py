"""Checkpoints: one format across both runtimes (upstream t5x's orbax layout), one reader for all.

  layout        the layouts FLIP meets (`t5x`, `t5x_msgpack`, `flip_items`) and `locate`
  params        `load_params`: parameters of any of them, in the model's shapes and shardings
  msgpack       t5x's legacy msgpack + TensorStore reader (the official FLIP release)
  release       the official release's parameter names and layouts -> ours
  position      the input position (t5x's `dataset` item: tf.data iterator + FLIP's counters)
  checkpointer  the writer (`save_params`, `TrainCheckpointer`: save/resume the train state)
  importer      `import_checkpoint`: read, check, convert once, write (import binary, pretrained cache)

The names below are what the rest of flip_t5x uses (`checkpoints.locate(path)`, ...).
"""
from flip_t5x.checkpoints.checkpointer import from_t5x_state_dict
from flip_t5x.checkpoints.checkpointer import save_params
from flip_t5x.checkpoints.checkpointer import t5x_state_dict
from flip_t5x.checkpoints.checkpointer import TrainCheckpointer
from flip_t5x.checkpoints.layout import absolute
from flip_t5x.checkpoints.layout import CheckpointShapeError
from flip_t5x.checkpoints.layout import FLIP_ITEMS
from flip_t5x.checkpoints.layout import InputPositionError
from flip_t5x.checkpoints.layout import latest_step
from flip_t5x.checkpoints.layout import locate
from flip_t5x.checkpoints.layout import MSGPACK_FILE
from flip_t5x.checkpoints.layout import Located
from flip_t5x.checkpoints.layout import NoCheckpointError
from flip_t5x.checkpoints.layout import read_meta
from flip_t5x.checkpoints.layout import STEP_PREFIX
from flip_t5x.checkpoints.layout import T5X
from flip_t5x.checkpoints.layout import T5X_MSGPACK
from flip_t5x.checkpoints.msgpack import CheckpointError
from flip_t5x.checkpoints.params import checkpoint_step
from flip_t5x.checkpoints.params import load_params
from flip_t5x.checkpoints.params import read_arrays
from flip_t5x.checkpoints.params import resize_position_embedding
from flip_t5x.checkpoints.params import restore_params
from flip_t5x.checkpoints.position import restore_input_position
from flip_t5x.checkpoints.position import save_input_position
from flip_t5x.checkpoints.release import CheckpointMismatchError

# What reading a checkpoint raises for bad input (no checkpoint at the path, one of another model,
# a damaged or foreign release): binaries declare these to `gin_utils.run` (one line, exit 2).
READ_ERRORS = (NoCheckpointError, CheckpointShapeError, CheckpointError, CheckpointMismatchError)
