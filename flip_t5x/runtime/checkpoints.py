"""Checkpoints in upstream t5x's layout, and one reader for every checkpoint FLIP meets.

What `flip_t5x.train` and `save_params` write is what `t5x.train` (orbax) writes:

  MODEL_DIR/checkpoint_<step>/
    _CHECKPOINT_METADATA, commit_success.txt   orbax's step metadata; FLIP's seeds and batch size
                                               ride in its `custom_metadata` (t5x ignores them)
    state/    an orbax PyTree (ocdbt) of t5x's state dict:
              {"target": params,
               "state": {"step": int32, "param_states": the optax state as t5x's OptaxWrapper
                         stores it (flax state dict: tuples -> "0", "1", ...; empty states dropped)}}
              A params-only checkpoint (`save_params`) holds {"target", "state": {"step"}}, as
              t5x's InferenceState does.
    dataset/  train_ds-<shard>-of-<count>.{index,data-*}: each input shard's tf.data iterator
              (`tf.train.Checkpoint(ds=iterator)`, t5x's key and names; with several processes under
              process_<i>-of-<n>/, as t5x) and FLIP's skipped-record counters beside it in
              flip_counters-<shard>-of-<count>.*, a file t5x never opens.

Writes are asynchronous and atomic (orbax writes a temporary directory and renames it when
complete, so a crash mid-write leaves the previous checkpoint as the latest).

`locate` finds, and `load_params` / `TrainCheckpointer` read, given a MODEL_DIR (its latest step)
or one `checkpoint_<step>` directory:
  - `t5x`: the layout above, written by this project or by upstream `t5x.train`;
  - `t5x_msgpack`: t5x's legacy msgpack + TensorStore checkpoints (a `checkpoint` file; the
    official FLIP release, whose parameter names `flip_t5x.import_checkpoint` maps);
  - `flip_items`: what earlier flip_t5x releases wrote (`params/ opt_state/ meta/
    input_position/`).
A path holding none of them raises `NoCheckpointError`, whose message says what is there.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
from etils import epath
from flax import serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from flip_t5x.data import preprocessors
from flip_t5x.data import sources
from flip_t5x.runtime import train_state as train_state_lib

PyTree = Any

STEP_PREFIX = "checkpoint"
_STEP_DIR_RE = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
# t5x's item names and state-dict keys.
STATE = "state"
DATASET = "dataset"
TARGET = "target"
TRAIN_DS_PREFIX = "train_ds"
FLIP_COUNTERS_PREFIX = "flip_counters"
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

# Parameters that may be resized (interpolated) when the checkpoint's shape differs.
RESIZABLE_PATTERNS = (r"pos_embed",)


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


# ------------------------------------------------------------------------------------------------
# Finding a checkpoint.
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


def _step_of(name: str) -> Optional[int]:
  match = _STEP_DIR_RE.match(name)
  return int(match.group(1)) if match else None


def _steps_in(directory: epath.Path) -> Dict[int, epath.Path]:
  """{step: dir} of the readable `checkpoint_<step>` directories in `directory`."""
  found = {}
  for child in directory.iterdir():
    step = _step_of(child.name)
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
      return Located(path, _step_of(path.name), fmt)
    steps = _steps_in(path)
    if steps:
      step = max(steps)
      return Located(steps[step], step, step_format(steps[step]))
  raise NoCheckpointError(f"no readable checkpoint at {checkpoint_path}: {_describe(path)}")


def checkpoint_step(checkpoint_path: str) -> int:
  """The training step of a checkpoint (a MODEL_DIR gives its latest)."""
  loc = locate(checkpoint_path)
  if loc.step is not None:
    return loc.step
  if loc.format == T5X:
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=one)
    return int(_restore_pytree(loc.path / STATE, {STATE: {"step": step}})[STATE]["step"])
  if loc.format == T5X_MSGPACK:
    step = _msgpack(loc).step
    if step is not None:
      return step
  if loc.format == FLIP_ITEMS:
    return int(read_meta(os.fspath(loc.path))["step"])
  return 0


def latest_step(model_dir: str) -> Optional[int]:
  """The latest readable checkpoint step in `model_dir`, or None."""
  path = absolute(model_dir)
  steps = _steps_in(path) if path.is_dir() else {}
  return max(steps) if steps else None


# ------------------------------------------------------------------------------------------------
# t5x's state dict.
def _flat(tree: PyTree) -> Dict[str, Any]:
  return traverse_util.flatten_dict(dict(tree), sep="/")


def t5x_state_dict(state: train_state_lib.TrainState) -> Dict[str, Any]:
  """{"target", "state": {"step", "param_states"}}: t5x's OptaxWrapper state dict of `state`.

  Tuples become {"0": ..}, named tuples dicts of their fields (flax's state dict), and empty
  states (optax.EmptyState, masked-out leaves) are dropped, as t5x drops them.
  """
  param_states = serialization.to_state_dict(state.opt_state)
  param_states = traverse_util.unflatten_dict(_flat(param_states), sep="/")  # drops empty nodes
  return {TARGET: state.params, STATE: {"step": state.step, "param_states": param_states}}


def from_t5x_state_dict(template: train_state_lib.TrainState,
                        state_dict: Mapping[str, Any]) -> train_state_lib.TrainState:
  """Inverse of `t5x_state_dict`: the empty states come back from `template`'s optimizer."""
  ref = traverse_util.flatten_dict(serialization.to_state_dict(template.opt_state),
                                   keep_empty_nodes=True, sep="/")
  got = _flat(state_dict[STATE]["param_states"])
  for k, v in ref.items():
    if k not in got:
      if v is not traverse_util.empty_node:
        raise ValueError(f"optimizer state {k} is missing from the checkpoint")
      got[k] = v
  opt_state = serialization.from_state_dict(template.opt_state,
                                            traverse_util.unflatten_dict(got, sep="/"))
  return train_state_lib.TrainState(step=state_dict[STATE]["step"],
                                    params=state_dict[TARGET], opt_state=opt_state)


def _pytree_metadata(directory: epath.Path) -> Dict[str, Any]:
  meta = ocp.PyTreeCheckpointHandler().metadata(directory)
  return dict(getattr(meta, "tree", meta))


def _restore_pytree(directory: epath.Path, target: PyTree) -> PyTree:
  """Restores the subtree `target` names (ShapeDtypeStructs carry dtype and sharding)."""
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))


# ------------------------------------------------------------------------------------------------
# Parameters, from any format.
@dataclasses.dataclass
class _StoredParams:
  """A checkpoint's parameters: flat shapes, and a reader taking flat targets (with shardings)."""

  shapes: Dict[str, Tuple[int, ...]]
  read: Callable[[Dict[str, jax.ShapeDtypeStruct]], Dict[str, Any]]


def _orbax_params(directory: epath.Path, prefix: Tuple[str, ...]) -> _StoredParams:
  tree = _pytree_metadata(directory)
  for key in prefix:
    tree = tree[key]
  shapes = {k: tuple(v.shape) for k, v in _flat(tree).items()}

  def read(target):
    nested = traverse_util.unflatten_dict(target, sep="/")
    for key in reversed(prefix):
      nested = {key: nested}
    restored = _restore_pytree(directory, nested)
    for key in prefix:
      restored = restored[key]
    return _flat(restored)

  return _StoredParams(shapes, read)


def _msgpack(loc: Located) -> Any:
  # The legacy reader lives with the official-name mapping (flip_t5x.import_checkpoint), which
  # imports this module; imported here to keep the dependency one way at import time.
  from flip_t5x import import_checkpoint  # pylint: disable=g-import-not-at-top
  try:
    return import_checkpoint.read_t5x_checkpoint(os.fspath(loc.path))
  except import_checkpoint.CheckpointError as e:
    raise NoCheckpointError(f"no readable checkpoint at {loc.path}: {e}") from None


def _host_params(flat: Mapping[str, Any]) -> _StoredParams:
  def read(target):
    return {k: jax.device_put(np.asarray(flat[k]).astype(t.dtype), t.sharding)
            for k, t in target.items()}
  return _StoredParams({k: tuple(np.shape(v)) for k, v in flat.items()}, read)


def _msgpack_params(loc: Located, model: Any) -> _StoredParams:
  """A t5x msgpack checkpoint: this project's names as stored, or the official release's mapped."""
  from flip_t5x import import_checkpoint  # pylint: disable=g-import-not-at-top
  ckpt = _msgpack(loc)
  if not import_checkpoint.has_official_names(list(ckpt.target)):
    return _StoredParams({n: ckpt.shape(n) for n in ckpt.target},
                         lambda target: {k: jax.device_put(np.asarray(ckpt.read(k)).astype(
                             t.dtype), t.sharding) for k, t in target.items()})
  if model is None:
    raise ValueError(f"{loc.path} holds the official FLIP release's parameter names: reading it "
                     "needs the model (load_params)")
  try:
    return _host_params(_flat(import_checkpoint.convert_params(ckpt, model)))
  except import_checkpoint.CheckpointMismatchError as e:
    raise CheckpointShapeError(str(e)) from None


def stored_params(loc: Located, model: Any = None) -> _StoredParams:
  """The parameters of the checkpoint `loc`, in any format."""
  if loc.format == T5X:
    return _orbax_params(loc.path / STATE, (TARGET,))
  if loc.format == FLIP_ITEMS:
    return _orbax_params(loc.path / PARAMS, ())
  return _msgpack_params(loc, model)


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


def restore_params(loc: Located, abstract_params: PyTree, shardings: PyTree,
                   model: Any = None) -> PyTree:
  """Params of checkpoint `loc` in the model's shapes and shardings; position embeddings resized.

  Any other difference (missing, unexpected or differently shaped parameters) is one error that
  lists every offending parameter. `model` is needed only for the official release's names.
  """
  flat_abstract = _flat(abstract_params)
  stored = stored_params(loc, model)
  wanted = {k: tuple(v.shape) for k, v in flat_abstract.items()}
  flat_shardings = _flat(shardings)
  missing = sorted(set(wanted) - set(stored.shapes))
  unexpected = sorted(set(stored.shapes) - set(wanted))
  resize, mismatched = [], []
  for k in sorted(set(wanted) & set(stored.shapes)):
    if wanted[k] != stored.shapes[k]:
      if any(re.search(p, k) for p in RESIZABLE_PATTERNS):
        resize.append(k)
      else:
        mismatched.append(f"{k}: checkpoint {stored.shapes[k]} vs model {wanted[k]}")
  if missing or unexpected or mismatched:
    lines = []
    if mismatched:
      lines.append("shape mismatches:\n  " + "\n  ".join(mismatched))
    if missing:
      lines.append("missing from the checkpoint:\n  " + "\n  ".join(missing))
    if unexpected:
      lines.append("not in the model:\n  " + "\n  ".join(unexpected))
    raise CheckpointShapeError(
        f"checkpoint {loc.path} does not fit the model:\n" + "\n".join(lines))
  target = {}
  for k, a in flat_abstract.items():
    if k in resize:
      # Read the stored shape replicated, interpolate on the host, then shard.
      replicated = flat_shardings[k]
      if isinstance(replicated, jax.sharding.NamedSharding):
        replicated = jax.sharding.NamedSharding(replicated.mesh, jax.sharding.PartitionSpec())
      target[k] = jax.ShapeDtypeStruct(stored.shapes[k], a.dtype, sharding=replicated)
    else:
      target[k] = jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=flat_shardings[k])
  flat = stored.read(target)
  for k in resize:
    logging.info("resizing %s from %s to %s", k, stored.shapes[k], wanted[k])
    host = np.asarray(jax.device_get(flat[k]))
    resized = resize_position_embedding(host, wanted[k]).astype(flat_abstract[k].dtype)
    flat[k] = jax.make_array_from_callback(wanted[k], flat_shardings[k], lambda idx, r=resized: r[idx])
  return traverse_util.unflatten_dict(flat, sep="/")


def load_params(checkpoint_path: str, model: Any, partitioner: Any = None) -> PyTree:
  """The params of a checkpoint (MODEL_DIR = its latest step) for `model`, in any format.

  Sharded by the partitioner's rules if one is given, else on the first local device.
  """
  loc = locate(checkpoint_path)
  shapes = train_state_lib.model_input_shapes(model)
  if partitioner is not None:
    abstract, specs = train_state_lib.params_specs(model, partitioner, shapes)
    shardings = jax.tree_util.tree_map(
        partitioner.sharding, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  else:
    abstract, _ = train_state_lib.abstract_params_and_axes(model, shapes)
    shardings = _default_shardings(abstract)
  return restore_params(loc, abstract, shardings, model)


def read_arrays(checkpoint_path: str) -> Dict[str, np.ndarray]:
  """Every parameter of a checkpoint as flat {name: host array}, without a model.

  For tools and tests; the official release's names are returned as stored.
  """
  loc = locate(checkpoint_path)
  if loc.format == T5X_MSGPACK:
    ckpt = _msgpack(loc)
    return {k: np.asarray(ckpt.read(k)) for k in ckpt.target}
  stored = stored_params(loc)
  device = jax.local_devices()[0]
  meta_dtypes = _stored_dtypes(loc)
  target = {k: jax.ShapeDtypeStruct(s, meta_dtypes[k],
                                    sharding=jax.sharding.SingleDeviceSharding(device))
            for k, s in stored.shapes.items()}
  return {k: np.asarray(v) for k, v in stored.read(target).items()}


def _stored_dtypes(loc: Located) -> Dict[str, Any]:
  tree = _pytree_metadata(loc.path / (STATE if loc.format == T5X else PARAMS))
  if loc.format == T5X:
    tree = tree[TARGET]
  return {k: v.dtype for k, v in _flat(tree).items()}


def save_params(params: PyTree, output_dir: str, step: int = 0) -> str:
  """Writes a params-only checkpoint `output_dir/checkpoint_<step>`; returns its path.

  t5x's InferenceState layout ({"target", "state": {"step"}}): `load_params`,
  INITIAL_CHECKPOINT_PATH (unmasked tuning, imported weights) and `t5x.eval` read it.
  """
  manager = _manager(output_dir, handlers=_t5x_handlers(), enable_async=False)
  state = {TARGET: params, STATE: {"step": np.int32(step)}}
  try:
    manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeSave(state), DATASET: DatasetSave(None)}), force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  return os.path.join(os.fspath(output_dir), f"{STEP_PREFIX}_{step}")


# ------------------------------------------------------------------------------------------------
# The data position as t5x's `dataset` item.
def _dataset_dir(item_dir: epath.Path) -> epath.Path:
  if jax.process_count() > 1:
    return item_dir / f"process_{jax.process_index()}-of-{jax.process_count()}"
  return item_dir


def _shard_name(prefix: str, shard_id: int, num_shards: int) -> str:
  return f"{prefix}-{shard_id:03}-of-{num_shards:03}"


def _tf_iterator(iterator: Any) -> Any:
  return getattr(iterator, "_iterator", iterator)  # a NumpyIterator's tf.data iterator


def _counters_checkpoint(counter_names: Sequence[str]) -> tf.train.Checkpoint:
  trackables = {f"{name}_{k}": v for name in counter_names
                for k, v in preprocessors.counters(name).trackables().items()}
  return tf.train.Checkpoint(**trackables)


class DatasetHandler(ocp.CheckpointHandler):
  """t5x's `dataset` item: this shard's tf.data iterator, plus FLIP's skip counters beside it.

  Synchronous: the iterator state is captured inside `CheckpointManager.save`, before the train
  loop pulls the next batch; orbax's atomic rename covers it with the rest of the step.
  """

  def __init__(self, shard_id: int = 0, num_shards: int = 1,
               counter_names: Sequence[str] = ("train",)):
    self._ds_name = _shard_name(TRAIN_DS_PREFIX, shard_id, num_shards)
    self._counters_name = _shard_name(FLIP_COUNTERS_PREFIX, shard_id, num_shards)
    self._counter_names = tuple(counter_names)

  def save(self, directory: epath.Path, args: "DatasetSave") -> None:
    if args.iterator is None:
      return
    directory = _dataset_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(ds=_tf_iterator(args.iterator)).write(os.fspath(directory / self._ds_name))
    _counters_checkpoint(self._counter_names).write(os.fspath(directory / self._counters_name))

  def restore(self, directory: epath.Path, args: "DatasetRestore") -> Any:
    directory = _dataset_dir(directory)
    prefix = os.fspath(directory / self._ds_name)
    if not tf.io.gfile.exists(prefix + ".index"):
      raise InputPositionError(f"{directory} has no {self._ds_name} (was the run saved with "
                               "another number of input shards?)")
    try:
      tf.train.Checkpoint(ds=_tf_iterator(args.iterator)).read(prefix).assert_consumed()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
      raise InputPositionError(
          f"the tf.data position in {prefix} does not fit this run's input pipeline (a tf.data "
          f"iterator restores only into an identical graph): {str(e).splitlines()[0][:200]}"
      ) from None
    counters = os.fspath(directory / self._counters_name)
    if tf.io.gfile.exists(counters + ".index"):
      _counters_checkpoint(self._counter_names).read(counters).assert_consumed()
    else:
      logging.info("%s has no FLIP skip counters (written by t5x?): they restart at 0", directory)
    return args.iterator


@ocp.args.register_with_handler(DatasetHandler, for_save=True)
@dataclasses.dataclass
class DatasetSave(ocp.args.CheckpointArgs):
  iterator: Any = None


@ocp.args.register_with_handler(DatasetHandler, for_restore=True)
@dataclasses.dataclass
class DatasetRestore(ocp.args.CheckpointArgs):
  iterator: Any = None


# ------------------------------------------------------------------------------------------------
# Managers.
def _t5x_handlers(shard_id: int = 0, num_shards: int = 1) -> Dict[str, ocp.CheckpointHandler]:
  return {STATE: ocp.PyTreeCheckpointHandler(use_ocdbt=True),
          DATASET: DatasetHandler(shard_id, num_shards)}


def _legacy_handlers() -> Dict[str, ocp.CheckpointHandler]:
  return {PARAMS: ocp.StandardCheckpointHandler(), OPT_STATE: ocp.StandardCheckpointHandler(),
          META: ocp.JsonCheckpointHandler()}


def _manager(directory: str, handlers: Mapping[str, ocp.CheckpointHandler], *,
             max_to_keep: Optional[int] = None, enable_async: bool = True,
             read_only: bool = False) -> ocp.CheckpointManager:
  """An orbax manager over `directory/checkpoint_<step>` (t5x's naming, no zero padding)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, step_prefix=STEP_PREFIX, enable_async_checkpointing=enable_async,
      create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(absolute(directory), item_handlers=dict(handlers), options=options)


def read_meta(checkpoint_path: str) -> Mapping[str, Any]:
  """FLIP's run metadata of a checkpoint (step, seeds, batch size); {} if t5x wrote it."""
  loc = locate(checkpoint_path)
  if loc.format == FLIP_ITEMS:
    meta_dir = loc.path / META
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
      return dict(ckptr.restore(meta_dir))
  if loc.format != T5X:
    return {}
  custom = ocp.metadata.get_step_metadata(loc.path).custom_metadata or {}
  return dict(custom.get(CUSTOM_METADATA_KEY) or {})


class TrainCheckpointer:
  """Saves/restores the full train state and the data position for `flip_t5x.train`."""

  def __init__(self, model_dir: str, layout: train_state_lib.StateLayout,
               keep: Optional[int] = None, enable_async: bool = True, shard_id: int = 0,
               num_shards: int = 1):
    self.model_dir = model_dir
    self.layout = layout
    self._manager = _manager(model_dir, _t5x_handlers(shard_id, num_shards), max_to_keep=keep,
                             enable_async=enable_async)

  def latest_step(self) -> Optional[int]:
    return latest_step(self.model_dir)

  def all_steps(self) -> List[int]:
    return list(self._manager.all_steps())

  def _step_dir(self, step: int) -> epath.Path:
    return self._manager.directory / f"{STEP_PREFIX}_{step}"

  def save(self, state: train_state_lib.TrainState, meta: Mapping[str, Any],
           input_iterator: Any = None) -> None:
    """Starts an asynchronous save (the device arrays are copied before this returns).

    `input_iterator`: the train tf.data iterator positioned after the batches of `state.step`;
    its state is written before this returns. `meta` (FLIP's seeds, JSON) goes to the step's
    custom metadata.
    """
    step = int(meta["step"])
    items = {STATE: ocp.args.PyTreeSave(t5x_state_dict(state)),
             DATASET: DatasetSave(input_iterator)}
    self._manager.save(step, args=ocp.args.Composite(**items), force=True,
                       custom_metadata={CUSTOM_METADATA_KEY: dict(meta)})

  def restore(self, step: int) -> Tuple[train_state_lib.TrainState, Dict[str, Any]]:
    """The train state of `step` (t5x's layout or an earlier flip_t5x's) and FLIP's metadata."""
    step_dir = self._step_dir(step)
    target = self.layout.abstract_with_shardings()
    if step_format(step_dir) == FLIP_ITEMS:
      return self._restore_flip_items(step_dir, target)
    stored = _pytree_metadata(step_dir / STATE)
    if "param_states" not in stored.get(STATE, {}):
      raise ValueError(f"{step_dir} holds parameters only (no optimizer state): use it as "
                       "INITIAL_CHECKPOINT_PATH in another MODEL_DIR")
    restored = _restore_pytree(step_dir / STATE, t5x_state_dict(target))
    return from_t5x_state_dict(target, restored), dict(read_meta(os.fspath(step_dir)))

  def _restore_flip_items(self, step_dir: epath.Path, target: train_state_lib.TrainState
                          ) -> Tuple[train_state_lib.TrainState, Dict[str, Any]]:
    manager = _manager(os.fspath(step_dir.parent), _legacy_handlers(), read_only=True)
    step = _step_of(step_dir.name)
    try:
      if manager.item_metadata(step).get(OPT_STATE) is None:
        raise ValueError(f"{step_dir} holds parameters only (no optimizer state): use it as "
                         "INITIAL_CHECKPOINT_PATH in another MODEL_DIR")
      restored = manager.restore(step, args=ocp.args.Composite(**{
          PARAMS: ocp.args.StandardRestore(target.params),
          OPT_STATE: ocp.args.StandardRestore(target.opt_state),
          META: ocp.args.JsonRestore()}))
    finally:
      manager.close()
    meta = dict(restored[META])
    step_arr = jax.device_put(jnp.asarray(meta["step"], jnp.int32), self.layout.shardings.step)
    return (train_state_lib.TrainState(step=step_arr, params=restored[PARAMS],
                                       opt_state=restored[OPT_STATE]), meta)

  def has_input_position(self, step: int) -> bool:
    step_dir = self._step_dir(step)
    if step_format(step_dir) == FLIP_ITEMS:
      return (step_dir / INPUT_POSITION).is_dir()
    item = _dataset_dir(step_dir / DATASET)
    return item.is_dir() and any(p.name.startswith(TRAIN_DS_PREFIX) for p in item.iterdir())

  def restore_input_position(self, step: int, input_iterator: Any) -> None:
    """Repositions the (unused) train iterator as saved at `step`.

    Raises:
      InputPositionError: nothing saved for this shard, or a position from another pipeline.
    """
    step_dir = self._step_dir(step)
    if step_format(step_dir) == FLIP_ITEMS:
      if not sources.restore_input_position(input_iterator, os.fspath(step_dir / INPUT_POSITION),
                                            jax.process_index(), jax.process_count()):
        raise InputPositionError(f"{step_dir} has no input position for process "
                                 f"{jax.process_index()} of {jax.process_count()}")
      return
    self._manager.restore(step, args=ocp.args.Composite(**{
        DATASET: DatasetRestore(input_iterator)}))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
