"""Imports a checkpoint into this project's layout: read, check, convert once, write.

The one import behind `python -m flip_t5x.import_checkpoint` and the pretrained-model cache
(`flip_t5x.pretrained`): the official release (t5x msgpack, official names, mapped by `release`)
or anything `layout.locate` reads, whose parameters are checked against the model and copied.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

from absl import logging
import jax

from flip_t5x.checkpoints import checkpointer
from flip_t5x.checkpoints import layout
from flip_t5x.checkpoints import msgpack
from flip_t5x.checkpoints import params as params_lib
from flip_t5x.checkpoints import release

PyTree = Any


def import_checkpoint(source: str, model: Any, output: Optional[str],
                      step: Optional[int] = None, official_only: bool = False
                      ) -> Tuple[PyTree, int]:
  """Reads, checks and converts `source`; writes `output/checkpoint_<step>` (unless None).

  `source`: the official release (t5x msgpack, official names), or anything else
  `layout.locate` reads (t5x's orbax layout, a msgpack checkpoint of this project's names,
  an earlier flip_t5x layout), whose parameters are copied after the same shape checks;
  `official_only` refuses anything but the release's names (an archive that claims to be one).
  Returns (params, step); `step` defaults to the checkpoint's optimizer step (0 if absent), so
  the imported weights keep the step they were trained for. Nothing is left out: a learned
  temperature into a fixed-temperature model is refused (the loaders leave it out with a warning).

  Raises:
    layout.NoCheckpointError: nothing readable at `source`.
    release.CheckpointMismatchError: `official_only` and other names, or shapes that differ.
    layout.CheckpointShapeError: other formats whose parameters differ from the model's.
  """
  found = layout.locate(source)
  ckpt = msgpack.read_t5x_checkpoint(source) if found.format == layout.T5X_MSGPACK else None
  if ckpt is not None and release.has_official_names(ckpt.target):
    logging.info("read t5x checkpoint %s (version %s, step %s, %d arrays)", ckpt.path,
                 ckpt.version, ckpt.step, len(ckpt.target))
    params = release.convert_params(ckpt, model)
    stored_step = ckpt.step
  elif official_only:
    raise release.CheckpointMismatchError(
        f"the checkpoint at {found.path} does not hold the official FLIP parameter names")
  else:
    params = jax.device_get(params_lib.load_params(source, model, drop_logit_scale=False))
    stored_step = params_lib.checkpoint_step(source)
    logging.info("read %s checkpoint %s (step %s)", found.format, found.path, stored_step)
  if step is None:
    step = stored_step if stored_step is not None else 0
  if output is not None:
    path = checkpointer.save_params(params, output, step)
    logging.info("wrote flip_t5x checkpoint %s", path)
  return params, step
