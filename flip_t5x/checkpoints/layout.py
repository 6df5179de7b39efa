"""The checkpoint layouts FLIP meets, and `locate`, which finds one at a path and names its format.

  MODEL_DIR/checkpoint_<step>/   (t5x's step directories, no zero padding)
    - `t5x`: what upstream `t5x.train` (orbax) and `flip_t5x.train` write: `state/` (an orbax
      PyTree of t5x's state dict) and `dataset/` (the tf.data position);
    - `t5x_msgpack`: t5x's legacy msgpack + TensorStore checkpoint (a `checkpoint` file; the
      official FLIP release);
    - `flip_items`: earlier flip_t5x releases (`params/ opt_state/ meta/ input_position/`).
A path holding none of them raises `NoCheckpointError`, whose message says what is there.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, Mapping, Optional

from etils import epath
from flax import traverse_util
import orbax.checkpoint as ocp

PyTree = Any

STEP_PREFIX = "checkpoint"
_STEP_DIR_RE = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
# t5x's item names and state-dict keys.
STATE = "state"
DATASET = "dataset"
TARGET = "target"
CUSTOM_METADATA_KEY = "flip_t5x"
# t5x's legacy (msgpack) checkpoint file.
MSGPACK_FILE = "checkpoint"
# The items of earlier flip_t5x releases (read only).
PARAMS = "params"
OPT_STATE = "opt_state"
META = "meta"
INPUT_POSITION = "input_position"

# Checkpoint formats `locate` recognises.
T5X = "t5x"
T5X_MSGPACK = "t5x_msgpack"
FLIP_ITEMS = "flip_items"


class CheckpointShapeError(ValueError):
  """The checkpoint's parameters do not fit the model; the message lists them."""


class NoCheckpointError(FileNotFoundError):
  """No readable checkpoint at a path; the message names the path and what is there."""


class InputPositionError(RuntimeError):
  """A saved tf.data position does not restore into this run's input pipeline."""


def absolute(path: str) -> epath.Path:
  """Orbax wants absolute paths: make local ones absolute, leave gs://-style URLs alone."""
  path = os.fspath(path).rstrip("/")
  return epath.Path(path if "://" in path else os.path.abspath(path))


@dataclasses.dataclass(frozen=True)
class Located:
  """One checkpoint: its directory, training step (None if its name has none) and format."""

  path: epath.Path
  step: Optional[int]
  format: str


def step_format(step_dir: epath.Path) -> Optional[str]:
  """The format of a `checkpoint_<step>` directory, or None if it holds no checkpoint.

  An orbax step is complete once renamed from its temporary name (or, on object stores such as
  GCS, once commit_success.txt is written): orbax's own test decides.
  """
  if (step_dir / STATE).is_dir():
    return T5X if ocp.utils.is_checkpoint_finalized(step_dir) else None
  if (step_dir / PARAMS).is_dir():
    return FLIP_ITEMS
  if (step_dir / MSGPACK_FILE).is_file():
    return T5X_MSGPACK
  return None


def step_of(name: str) -> Optional[int]:
  """The step in a `checkpoint_<step>` directory name, or None."""
  match = _STEP_DIR_RE.match(name)
  return int(match.group(1)) if match else None


def _steps_in(directory: epath.Path) -> Dict[int, epath.Path]:
  """{step: dir} of the readable `checkpoint_<step>` directories in `directory`."""
  found = {}
  for child in directory.iterdir():
    step = step_of(child.name)
    if step is not None and child.is_dir() and step_format(child) is not None:
      found[step] = child
  return found


def _describe(path: epath.Path) -> str:
  """What is at `path`, for the error of a path without a readable checkpoint."""
  if not path.exists():
    return "nothing exists there"
  if not path.is_dir():
    return "it is a file, not a checkpoint directory"
  names = sorted(p.name for p in path.iterdir())
  if not names:
    return "an empty directory"
  shown = ", ".join(names[:8]) + (f", ... ({len(names)} entries)" if len(names) > 8 else "")
  return (f"a directory holding {shown}; expected checkpoint_<step>/ directories holding state/ "
          f"(t5x/orbax), params/ (earlier flip_t5x) or a t5x msgpack '{MSGPACK_FILE}' file")


def locate(checkpoint_path: str) -> Located:
  """The checkpoint at a `checkpoint_<step>` directory, or a MODEL_DIR's latest.

  Also accepts t5x's msgpack `checkpoint` file itself. Raises NoCheckpointError.
  """
  path = absolute(checkpoint_path)
  if path.name == MSGPACK_FILE and path.is_file():
    path = path.parent
  if path.is_dir():
    fmt = step_format(path)
    if fmt is not None:
      return Located(path, step_of(path.name), fmt)
    steps = _steps_in(path)
    if steps:
      step = max(steps)
      return Located(steps[step], step, step_format(steps[step]))
  raise NoCheckpointError(f"no readable checkpoint at {checkpoint_path}: {_describe(path)}")


def latest_step(model_dir: str) -> Optional[int]:
  """The latest readable checkpoint step in `model_dir`, or None."""
  path = absolute(model_dir)
  steps = _steps_in(path) if path.is_dir() else {}
  return max(steps) if steps else None


def flat(tree: PyTree) -> Dict[str, Any]:
  """A nested dict as {"a/b/c": leaf} (the names checkpoints and error messages use)."""
  return traverse_util.flatten_dict(dict(tree), sep="/")


def pytree_metadata(directory: epath.Path) -> Dict[str, Any]:
  """The tree of an orbax PyTree item, with each array's shape and dtype (nothing read)."""
  meta = ocp.PyTreeCheckpointHandler().metadata(directory)
  return dict(getattr(meta, "tree", meta))


def restore_pytree(directory: epath.Path, target: PyTree) -> PyTree:
  """Restores the subtree `target` names (ShapeDtypeStructs carry dtype and sharding)."""
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))


def read_meta(checkpoint_path: str) -> Mapping[str, Any]:
  """FLIP's run metadata of a checkpoint (step, seeds, batch size); {} if t5x wrote it."""
  loc = locate(checkpoint_path)
  if loc.format == FLIP_ITEMS:
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
      return dict(ckptr.restore(loc.path / META))
  if loc.format != T5X:
    return {}
  custom = ocp.metadata.get_step_metadata(loc.path).custom_metadata or {}
  return dict(custom.get(CUSTOM_METADATA_KEY) or {})
