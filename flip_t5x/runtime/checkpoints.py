"""Checkpoints: orbax `CheckpointManager` directories `MODEL_DIR/checkpoint_<step>`, as t5x writes.

Each step directory holds orbax items: `params`, `opt_state` (absent in params-only checkpoints
written by `save_params`), `meta` (JSON: step, data seed) and, when the run saves its data
position (`SaveCheckpointConfig.save_dataset`), `input_position`: each process's tf.data iterator
state and skip counters (`flip_t5x.data.sources.save_input_position`), so a resumed run continues
the input stream where it stopped without re-reading it.
Writes are asynchronous and atomic (orbax writes a temporary directory and renames it when
complete, so a crash mid-write leaves the previous checkpoint as the latest).

Public helpers for the other binaries: `load_params`, `checkpoint_step`, `save_params`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from flip_t5x.data import sources
from flip_t5x.runtime import train_state as train_state_lib

PyTree = Any

PARAMS = "params"
OPT_STATE = "opt_state"
META = "meta"
INPUT_POSITION = "input_position"
STEP_PREFIX = "checkpoint"
_STEP_DIR_RE = re.compile(rf"^{STEP_PREFIX}_(\d+)$")

# Parameters that may be resized (interpolated) when the checkpoint's shape differs.
RESIZABLE_PATTERNS = (r"pos_embed",)


class CheckpointShapeError(ValueError):
  """The checkpoint's parameters do not fit the model; the message lists them."""


def absolute(path: str) -> epath.Path:
  """Orbax wants absolute paths: make local ones absolute, leave gs://-style URLs alone."""
  path = os.fspath(path).rstrip("/")
  return epath.Path(path if "://" in path else os.path.abspath(path))


# ------------------------------------------------------------------------------------------------
# The input position as an orbax item (as grain's PyGrainCheckpointHandler does for grain).
class InputPositionHandler(ocp.CheckpointHandler):
  """Saves/restores this process's tf.data iterator (one file set per process in the item dir).

  Synchronous: the iterator state is captured inside `CheckpointManager.save`, before the train
  loop pulls the next batch; orbax's atomic rename covers it with the rest of the step.
  """

  def save(self, directory: epath.Path, args: "InputPositionSave") -> None:
    sources.save_input_position(args.iterator, os.fspath(directory), jax.process_index(),
                                jax.process_count())

  def restore(self, directory: epath.Path, args: "InputPositionRestore") -> Any:
    if not sources.restore_input_position(args.iterator, os.fspath(directory),
                                          jax.process_index(), jax.process_count()):
      raise FileNotFoundError(
          f"{directory} has no input position for process {jax.process_index()} of "
          f"{jax.process_count()} (was the run saved with another number of processes?)")
    return args.iterator


@ocp.args.register_with_handler(InputPositionHandler, for_save=True)
@dataclasses.dataclass
class InputPositionSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(InputPositionHandler, for_restore=True)
@dataclasses.dataclass
class InputPositionRestore(ocp.args.CheckpointArgs):
  iterator: Any


def make_manager(directory: str, *, max_to_keep: Optional[int] = None,
                 enable_async: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  """An orbax manager over `directory/checkpoint_<step>` (t5x's naming, no zero padding)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, step_prefix=STEP_PREFIX, enable_async_checkpointing=enable_async,
      create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
  handlers = {PARAMS: ocp.StandardCheckpointHandler(), OPT_STATE: ocp.StandardCheckpointHandler(),
              META: ocp.JsonCheckpointHandler(), INPUT_POSITION: InputPositionHandler()}
  return ocp.CheckpointManager(absolute(directory), item_handlers=handlers, options=options)


def resolve(checkpoint_path: str) -> Tuple[str, int]:
  """(manager root, step) for a MODEL_DIR (its latest step) or a `checkpoint_<step>` directory."""
  path = absolute(checkpoint_path)
  match = _STEP_DIR_RE.match(path.name)
  if match and path.is_dir():
    return os.fspath(path.parent), int(match.group(1))
  if not path.is_dir():
    raise FileNotFoundError(f"no checkpoint at {checkpoint_path!r}")
  steps = sorted(int(m.group(1)) for m in (_STEP_DIR_RE.match(p.name) for p in path.iterdir())
                 if m and _is_complete(path / m.group(0)))
  if not steps:
    raise FileNotFoundError(f"no complete checkpoint_<step> directory in {checkpoint_path!r}")
  return os.fspath(path), steps[-1]


def _is_complete(step_dir: epath.Path) -> bool:
  # orbax renames the temporary directory only once every item is written.
  return (step_dir / PARAMS).is_dir()


def checkpoint_step(checkpoint_path: str) -> int:
  """The training step of a checkpoint (a MODEL_DIR gives its latest)."""
  return resolve(checkpoint_path)[1]


def latest_step(model_dir: str) -> Optional[int]:
  """The latest complete checkpoint step in `model_dir`, or None."""
  try:
    return resolve(model_dir)[1]
  except FileNotFoundError:
    return None


def _flat(tree: PyTree) -> Dict[str, Any]:
  return traverse_util.flatten_dict(dict(tree), sep="/")


def _stored_shapes(manager: ocp.CheckpointManager, step: int) -> Dict[str, Tuple[int, ...]]:
  meta = manager.item_metadata(step)[PARAMS]
  tree = getattr(meta, "tree", meta)
  return {k: tuple(v.shape) for k, v in _flat(tree).items()}


def resize_position_embedding(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """Interpolates a position embedding to `shape` ([length, width]; width unchanged).

  A square number of positions is treated as a 2-D grid and resized bilinearly (a learned image
  grid); otherwise the sequence axis is resized linearly.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 2 or len(shape) != 2 or x.shape[1] != shape[1]:
    raise CheckpointShapeError(f"cannot resize a position embedding {x.shape} to {tuple(shape)}")
  old_n, new_n = x.shape[0], shape[0]
  g_old, g_new = int(round(old_n ** 0.5)), int(round(new_n ** 0.5))
  if g_old * g_old == old_n and g_new * g_new == new_n and g_old > 1 and g_new > 1:
    grid = jnp.asarray(x.reshape(g_old, g_old, -1))
    out = jax.image.resize(grid, (g_new, g_new, x.shape[1]), "bilinear")
    return np.asarray(out).reshape(new_n, -1)
  return np.asarray(jax.image.resize(jnp.asarray(x), tuple(shape), "linear"))


def _default_shardings(abstract: PyTree) -> PyTree:
  device = jax.local_devices()[0]
  return jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(device), abstract)


def restore_params(manager: ocp.CheckpointManager, step: int, abstract_params: PyTree,
                   shardings: PyTree, where: str = "") -> PyTree:
  """Params of `step` in the model's shapes and shardings; position embeddings are resized.

  Any other difference (missing, unexpected or differently shaped parameters) is one error that
  lists every offending parameter.
  """
  stored = _stored_shapes(manager, step)
  wanted = {k: tuple(v.shape) for k, v in _flat(abstract_params).items()}
  flat_shardings = _flat(shardings)
  missing = sorted(set(wanted) - set(stored))
  unexpected = sorted(set(stored) - set(wanted))
  resize, mismatched = [], []
  for k in sorted(set(wanted) & set(stored)):
    if wanted[k] != stored[k]:
      if any(re.search(p, k) for p in RESIZABLE_PATTERNS):
        resize.append(k)
      else:
        mismatched.append(f"{k}: checkpoint {stored[k]} vs model {wanted[k]}")
  if missing or unexpected or mismatched:
    lines = []
    if mismatched:
      lines.append("shape mismatches:\n  " + "\n  ".join(mismatched))
    if missing:
      lines.append("missing from the checkpoint:\n  " + "\n  ".join(missing))
    if unexpected:
      lines.append("not in the model:\n  " + "\n  ".join(unexpected))
    raise CheckpointShapeError(
        f"checkpoint {where or manager.directory} (step {step}) does not fit the model:\n"
        + "\n".join(lines))
  flat_abstract = _flat(abstract_params)
  target = {}
  for k, a in flat_abstract.items():
    if k in resize:
      # Read the stored shape replicated, interpolate on the host, then shard.
      replicated = flat_shardings[k]
      if isinstance(replicated, jax.sharding.NamedSharding):
        replicated = jax.sharding.NamedSharding(replicated.mesh, jax.sharding.PartitionSpec())
      target[k] = jax.ShapeDtypeStruct(stored[k], a.dtype, sharding=replicated)
    else:
      target[k] = jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=flat_shardings[k])
  restored = manager.restore(step, args=ocp.args.Composite(**{
      PARAMS: ocp.args.StandardRestore(traverse_util.unflatten_dict(target, sep="/"))}))[PARAMS]
  flat = _flat(restored)
  for k in resize:
    logging.info("resizing %s from %s to %s", k, stored[k], wanted[k])
    host = np.asarray(jax.device_get(flat[k]))
    resized = resize_position_embedding(host, wanted[k]).astype(flat_abstract[k].dtype)
    flat[k] = jax.make_array_from_callback(wanted[k], flat_shardings[k], lambda idx, r=resized: r[idx])
  return traverse_util.unflatten_dict(flat, sep="/")


def load_params(checkpoint_path: str, model: Any, partitioner: Any = None) -> PyTree:
  """The params of a checkpoint (MODEL_DIR = its latest step) for `model`.

  Sharded by the partitioner's rules if one is given, else on the first local device.
  """
  root, step = resolve(checkpoint_path)
  shapes = train_state_lib.model_input_shapes(model)
  if partitioner is not None:
    abstract, specs = train_state_lib.params_specs(model, partitioner, shapes)
    shardings = jax.tree_util.tree_map(
        partitioner.sharding, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  else:
    abstract, _ = train_state_lib.abstract_params_and_axes(model, shapes)
    shardings = _default_shardings(abstract)
  manager = make_manager(root, read_only=True)
  try:
    return restore_params(manager, step, abstract, shardings, where=checkpoint_path)
  finally:
    manager.close()


def save_params(params: PyTree, output_dir: str, step: int = 0) -> str:
  """Writes a params-only checkpoint `output_dir/checkpoint_<step>`; returns its path.

  `load_params` and INITIAL_CHECKPOINT_PATH (unmasked tuning, imported weights) accept it.
  """
  manager = make_manager(output_dir, enable_async=False)
  try:
    manager.save(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        META: ocp.args.JsonSave({"step": int(step), "params_only": True})}), force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  return os.path.join(os.fspath(output_dir), f"{STEP_PREFIX}_{step}")


def read_meta(checkpoint_path: str) -> Mapping[str, Any]:
  """The JSON `meta` item of a checkpoint (step, data seed and position)."""
  root, step = resolve(checkpoint_path)
  manager = make_manager(root, read_only=True)
  try:
    return dict(manager.restore(step, args=ocp.args.Composite(
        **{META: ocp.args.JsonRestore()}))[META])
  finally:
    manager.close()


class TrainCheckpointer:
  """Saves/restores the full train state and the data position for `flip_t5x.train`."""

  def __init__(self, model_dir: str, layout: train_state_lib.StateLayout,
               keep: Optional[int] = None, enable_async: bool = True):
    self.model_dir = model_dir
    self.layout = layout
    self._manager = make_manager(model_dir, max_to_keep=keep, enable_async=enable_async)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> List[int]:
    return list(self._manager.all_steps())

  def save(self, state: train_state_lib.TrainState, meta: Mapping[str, Any],
           input_iterator: Any = None) -> None:
    """Starts an asynchronous save (the device arrays are copied before this returns).

    `input_iterator`: the train tf.data iterator positioned after the batches of `state.step`;
    its state is written before this returns.
    """
    step = int(meta["step"])
    items = {PARAMS: ocp.args.StandardSave(state.params),
             OPT_STATE: ocp.args.StandardSave(state.opt_state),
             META: ocp.args.JsonSave(dict(meta))}
    if input_iterator is not None:
      items[INPUT_POSITION] = InputPositionSave(input_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def has_input_position(self, step: int) -> bool:
    return (self._manager.directory / f"{STEP_PREFIX}_{step}" / INPUT_POSITION).is_dir()

  def restore(self, step: int) -> Tuple[train_state_lib.TrainState, Dict[str, Any]]:
    target = self.layout.abstract_with_shardings()
    items = self._manager.item_metadata(step)
    if items.get(OPT_STATE) is None:
      raise ValueError(f"{self.model_dir}/{STEP_PREFIX}_{step} holds parameters only (no optimizer "
                       "state): use it as INITIAL_CHECKPOINT_PATH in another MODEL_DIR")
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardRestore(target.params),
        OPT_STATE: ocp.args.StandardRestore(target.opt_state),
        META: ocp.args.JsonRestore()}))
    meta = dict(restored[META])
    step_arr = jax.device_put(jnp.asarray(meta["step"], jnp.int32), self.layout.shardings.step)
    return (train_state_lib.TrainState(step=step_arr, params=restored[PARAMS],
                                       opt_state=restored[OPT_STATE]), meta)

  def restore_input_position(self, step: int, input_iterator: Any) -> bool:
    """Repositions the (unused) train iterator as saved at `step`; False if nothing was saved."""
    if not self.has_input_position(step):
      return False
    self._manager.restore(step, args=ocp.args.Composite(**{
        INPUT_POSITION: InputPositionRestore(input_iterator)}))
    return True

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
