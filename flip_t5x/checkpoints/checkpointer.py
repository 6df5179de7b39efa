"""Writing checkpoints in upstream t5x's layout, and the train state's save/restore for resuming.

What `flip_t5x.train` and `save_params` write is what `t5x.train` (orbax) writes:

  MODEL_DIR/checkpoint_<step>/
    _CHECKPOINT_METADATA, commit_success.txt   orbax's step metadata; FLIP's seeds and batch size
                                               ride in its `custom_metadata` (t5x ignores them)
    state/    an orbax PyTree (ocdbt) of t5x's state dict:
              {"target": params,
               "state": {"step": int32, "param_states": the optax state as t5x's OptaxWrapper
                         stores it (flax state dict: tuples -> "0", "1", ...; empty states
                         dropped)}}
              A params-only checkpoint (`save_params`) holds {"target", "state": {"step"}}, as
              t5x's InferenceState does.
    dataset/  the input position (`position.DatasetHandler`).

Writes are asynchronous and atomic (orbax writes a temporary directory and renames it when
complete, so a crash mid-write leaves the previous checkpoint as the latest).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from etils import epath
from flax import serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from flip_t5x import train_state as train_state_lib
from flip_t5x.checkpoints import layout
from flip_t5x.checkpoints import params as params_lib
from flip_t5x.checkpoints import position

PyTree = Any


def t5x_state_dict(state: train_state_lib.TrainState) -> Dict[str, Any]:
  """{"target", "state": {"step", "param_states"}}: t5x's OptaxWrapper state dict of `state`.

  Tuples become {"0": ..}, named tuples dicts of their fields (flax's state dict), and empty
  states (optax.EmptyState, masked-out leaves) are dropped, as t5x drops them.
  """
  param_states = serialization.to_state_dict(state.opt_state)
  param_states = traverse_util.unflatten_dict(layout.flat(param_states), sep="/")  # drops empties
  return {layout.TARGET: state.params,
          layout.STATE: {"step": state.step, "param_states": param_states}}


def from_t5x_state_dict(template: train_state_lib.TrainState,
                        state_dict: Mapping[str, Any]) -> train_state_lib.TrainState:
  """Inverse of `t5x_state_dict`: the empty states come back from `template`'s optimizer."""
  ref = traverse_util.flatten_dict(serialization.to_state_dict(template.opt_state),
                                   keep_empty_nodes=True, sep="/")
  got = layout.flat(state_dict[layout.STATE]["param_states"])
  for k, v in ref.items():
    if k not in got:
      if v is not traverse_util.empty_node:
        raise ValueError(f"optimizer state {k} is missing from the checkpoint")
      got[k] = v
  opt_state = serialization.from_state_dict(template.opt_state,
                                            traverse_util.unflatten_dict(got, sep="/"))
  return train_state_lib.TrainState(step=state_dict[layout.STATE]["step"],
                                    params=state_dict[layout.TARGET], opt_state=opt_state)


def _t5x_handlers(shard_id: int = 0, num_shards: int = 1) -> Dict[str, ocp.CheckpointHandler]:
  return {layout.STATE: ocp.PyTreeCheckpointHandler(use_ocdbt=True),
          layout.DATASET: position.DatasetHandler(shard_id, num_shards)}


def _legacy_handlers() -> Dict[str, ocp.CheckpointHandler]:
  return {layout.PARAMS: ocp.StandardCheckpointHandler(),
          layout.OPT_STATE: ocp.StandardCheckpointHandler(),
          layout.META: ocp.JsonCheckpointHandler()}


def _manager(directory: str, handlers: Mapping[str, ocp.CheckpointHandler], *,
             max_to_keep: Optional[int] = None, enable_async: bool = True,
             read_only: bool = False) -> ocp.CheckpointManager:
  """An orbax manager over `directory/checkpoint_<step>` (t5x's naming, no zero padding)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, step_prefix=layout.STEP_PREFIX,
      enable_async_checkpointing=enable_async, create=not read_only, read_only=read_only,
      cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(layout.absolute(directory), item_handlers=dict(handlers),
                               options=options)


def save_params(params: PyTree, output_dir: str, step: int = 0) -> str:
  """Writes a params-only checkpoint `output_dir/checkpoint_<step>`; returns its path.

  t5x's InferenceState layout ({"target", "state": {"step"}}): `load_params`,
  INITIAL_CHECKPOINT_PATH (unmasked tuning, imported weights) and `t5x.eval` read it.
  """
  manager = _manager(output_dir, handlers=_t5x_handlers(), enable_async=False)
  state = {layout.TARGET: params, layout.STATE: {"step": np.int32(step)}}
  try:
    manager.save(step, args=ocp.args.Composite(**{
        layout.STATE: ocp.args.PyTreeSave(state),
        layout.DATASET: position.DatasetSave(None)}), force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  return os.path.join(os.fspath(output_dir), f"{layout.STEP_PREFIX}_{step}")


def _params_only(step_dir: epath.Path) -> ValueError:
  return ValueError(f"{step_dir} holds parameters only (no optimizer state): use it as "
                    "INITIAL_CHECKPOINT_PATH in another MODEL_DIR")


class TrainCheckpointer:
  """Saves/restores the full train state and the data position for `flip_t5x.train`."""

  def __init__(self, model_dir: str, state_layout: train_state_lib.StateLayout,
               keep: Optional[int] = None, enable_async: bool = True, shard_id: int = 0,
               num_shards: int = 1):
    self.model_dir = model_dir
    self.layout = state_layout
    self._manager = _manager(model_dir, _t5x_handlers(shard_id, num_shards), max_to_keep=keep,
                             enable_async=enable_async)

  def latest_step(self) -> Optional[int]:
    return layout.latest_step(self.model_dir)

  def all_steps(self) -> List[int]:
    return list(self._manager.all_steps())

  def _step_dir(self, step: int) -> epath.Path:
    return self._manager.directory / f"{layout.STEP_PREFIX}_{step}"

  def save(self, state: train_state_lib.TrainState, meta: Mapping[str, Any],
           input_iterator: Any = None) -> None:
    """Starts an asynchronous save (the device arrays are copied before this returns).

    `input_iterator`: the train tf.data iterator positioned after the batches of `state.step`;
    its state is written before this returns. `meta` (FLIP's seeds, JSON) goes to the step's
    custom metadata.
    """
    step = int(meta["step"])
    items = {layout.STATE: ocp.args.PyTreeSave(t5x_state_dict(state)),
             layout.DATASET: position.DatasetSave(input_iterator)}
    self._manager.save(step, args=ocp.args.Composite(**items), force=True,
                       custom_metadata={layout.CUSTOM_METADATA_KEY: dict(meta)})

  def restore(self, step: int) -> Tuple[train_state_lib.TrainState, Dict[str, Any]]:
    """The train state of `step` (t5x's layout or an earlier flip_t5x's) and FLIP's metadata."""
    step_dir = self._step_dir(step)
    target = self.layout.abstract_with_shardings()
    # Resuming continues the same model: orbax's partial restore would leave out a parameter the
    # model lacks (a learned logit_scale after learn_temperature was switched off) without a word,
    # and leave one it has unread; any difference is an error naming it.
    loc = layout.locate(os.fspath(step_dir))
    params_lib.check_fits(loc, {k: tuple(v.shape) for k, v in layout.flat(target.params).items()},
                          params_lib.stored_params(loc).shapes, resizable=())
    if layout.step_format(step_dir) == layout.FLIP_ITEMS:
      return self._restore_flip_items(step_dir, target)
    stored = layout.pytree_metadata(step_dir / layout.STATE)
    if "param_states" not in stored.get(layout.STATE, {}):
      raise _params_only(step_dir)
    restored = layout.restore_pytree(step_dir / layout.STATE, t5x_state_dict(target))
    return from_t5x_state_dict(target, restored), dict(layout.read_meta(os.fspath(step_dir)))

  def _restore_flip_items(self, step_dir: epath.Path, target: train_state_lib.TrainState
                          ) -> Tuple[train_state_lib.TrainState, Dict[str, Any]]:
    manager = _manager(os.fspath(step_dir.parent), _legacy_handlers(), read_only=True)
    step = layout.step_of(step_dir.name)
    try:
      if manager.item_metadata(step).get(layout.OPT_STATE) is None:
        raise _params_only(step_dir)
      restored = manager.restore(step, args=ocp.args.Composite(**{
          layout.PARAMS: ocp.args.StandardRestore(target.params),
          layout.OPT_STATE: ocp.args.StandardRestore(target.opt_state),
          layout.META: ocp.args.JsonRestore()}))
    finally:
      manager.close()
    meta = dict(restored[layout.META])
    step_arr = jax.device_put(jnp.asarray(meta["step"], jnp.int32), self.layout.shardings.step)
    return (train_state_lib.TrainState(step=step_arr, params=restored[layout.PARAMS],
                                       opt_state=restored[layout.OPT_STATE]), meta)

  def has_input_position(self, step: int) -> bool:
    step_dir = self._step_dir(step)
    if layout.step_format(step_dir) == layout.FLIP_ITEMS:
      return (step_dir / layout.INPUT_POSITION).is_dir()
    return position.has_position(step_dir / layout.DATASET)

  def restore_input_position(self, step: int, input_iterator: Any) -> None:
    """Repositions the (unused) train iterator as saved at `step`.

    Raises:
      InputPositionError: nothing saved for this shard, or a position from another pipeline.
    """
    step_dir = self._step_dir(step)
    if layout.step_format(step_dir) == layout.FLIP_ITEMS:
      if not position.restore_legacy_input_position(input_iterator, step_dir):
        raise layout.InputPositionError(f"{step_dir} has no input position for process "
                                        f"{jax.process_index()} of {jax.process_count()}")
      return
    self._manager.restore(step, args=ocp.args.Composite(**{
        layout.DATASET: position.DatasetRestore(input_iterator)}))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
