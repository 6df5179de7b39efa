"""Parameters from any checkpoint `locate` finds, in the model's shapes and shardings.

`load_params` serves every binary that loads weights (resume's INITIAL_CHECKPOINT_PATH,
flip_t5x.eval, FlipPredictor / flip_t5x.predict, import_checkpoint). The official release's names
are mapped on the fly (`release.convert_params`); a position embedding of another length is
interpolated; any other difference is one error listing every offending parameter.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Dict, Sequence, Tuple

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from flip_t5x import train_state as train_state_lib
from flip_t5x.checkpoints import layout
from flip_t5x.checkpoints import msgpack
from flip_t5x.checkpoints import release

PyTree = Any

# Parameters that may be resized (interpolated) when the checkpoint's shape differs.
RESIZABLE_PATTERNS = (r"pos_embed",)


@dataclasses.dataclass
class StoredParams:
  """A checkpoint's parameters: flat shapes, and a reader taking flat targets (with shardings)."""

  shapes: Dict[str, Tuple[int, ...]]
  read: Callable[[Dict[str, jax.ShapeDtypeStruct]], Dict[str, Any]]


def _orbax_params(directory, prefix: Tuple[str, ...]) -> StoredParams:
  tree = layout.pytree_metadata(directory)
  for key in prefix:
    tree = tree[key]
  shapes = {k: tuple(v.shape) for k, v in layout.flat(tree).items()}

  def read(target):
    nested = traverse_util.unflatten_dict(target, sep="/")
    for key in reversed(prefix):
      nested = {key: nested}
    restored = layout.restore_pytree(directory, nested)
    for key in prefix:
      restored = restored[key]
    return layout.flat(restored)

  return StoredParams(shapes, read)


def _host_params(arrays: Dict[str, Any]) -> StoredParams:
  def read(target):
    return {k: jax.device_put(np.asarray(arrays[k]).astype(t.dtype), t.sharding)
            for k, t in target.items()}
  return StoredParams({k: tuple(np.shape(v)) for k, v in arrays.items()}, read)


def _msgpack_params(loc: layout.Located, model: Any, drop_logit_scale: bool) -> StoredParams:
  """A t5x msgpack checkpoint: this project's names as stored, or the official release's mapped."""
  ckpt = msgpack.read_located(loc)
  if not release.has_official_names(list(ckpt.target)):
    return StoredParams({n: ckpt.shape(n) for n in ckpt.target},
                        lambda target: {k: jax.device_put(np.asarray(ckpt.read(k)).astype(
                            t.dtype), t.sharding) for k, t in target.items()})
  if model is None:
    raise ValueError(f"{loc.path} holds the official FLIP release's parameter names: reading it "
                     "needs the model (load_params)")
  try:
    return _host_params(layout.flat(release.convert_params(ckpt, model, drop_logit_scale)))
  except release.CheckpointMismatchError as e:
    raise layout.CheckpointShapeError(str(e)) from None


def stored_params(loc: layout.Located, model: Any = None,
                  drop_logit_scale: bool = False) -> StoredParams:
  """The parameters of the checkpoint `loc`, in any format (`drop_logit_scale`: see
  `restore_params`; the official release's is left out here, the others' by `check_fits`)."""
  if loc.format == layout.T5X:
    return _orbax_params(loc.path / layout.STATE, (layout.TARGET,))
  if loc.format == layout.FLIP_ITEMS:
    return _orbax_params(loc.path / layout.PARAMS, ())
  return _msgpack_params(loc, model, drop_logit_scale)


def checkpoint_step(checkpoint_path: str) -> int:
  """The training step of a checkpoint (a MODEL_DIR gives its latest)."""
  loc = layout.locate(checkpoint_path)
  if loc.step is not None:
    return loc.step
  if loc.format == layout.T5X:
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=one)
    restored = layout.restore_pytree(loc.path / layout.STATE, {layout.STATE: {"step": step}})
    return int(restored[layout.STATE]["step"])
  if loc.format == layout.T5X_MSGPACK:
    step = msgpack.read_located(loc).step
    if step is not None:
      return step
  if loc.format == layout.FLIP_ITEMS:
    return int(layout.read_meta(os.fspath(loc.path))["step"])
  return 0


def resize_position_embedding(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """Interpolates a position embedding to `shape` ([length, width]; width unchanged).

  A square number of positions is treated as a 2-D grid and resized bilinearly (a learned image
  grid); otherwise the sequence axis is resized linearly.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 2 or len(shape) != 2 or x.shape[1] != shape[1]:
    raise layout.CheckpointShapeError(
        f"cannot resize a position embedding {x.shape} to {tuple(shape)}")
  old_n, new_n = x.shape[0], shape[0]
  g_old, g_new = int(round(old_n ** 0.5)), int(round(new_n ** 0.5))
  if g_old * g_old == old_n and g_new * g_new == new_n and g_old > 1 and g_new > 1:
    grid = jnp.asarray(x.reshape(g_old, g_old, -1))
    out = jax.image.resize(grid, (g_new, g_new, x.shape[1]), "bilinear")
    return np.asarray(out).reshape(new_n, -1)
  return np.asarray(jax.image.resize(jnp.asarray(x), tuple(shape), "linear"))


def check_fits(loc: layout.Located, wanted: Dict[str, Tuple[int, ...]],
               stored: Dict[str, Tuple[int, ...]], drop_logit_scale: bool = False,
               resizable: Sequence[str] = RESIZABLE_PATTERNS) -> list:
  """The parameters to resize (names matching `resizable`); any other difference raises, listing
  every offending one. A learned temperature the model lacks passes with `drop_logit_scale` (the
  caller leaves it out); any other temperature difference is one line naming the switch."""
  temperature = release.temperature_problem(loc.path, release.LOGIT_SCALE in wanted,
                                            release.LOGIT_SCALE in stored, drop_logit_scale)
  missing = sorted(set(wanted) - set(stored) - {release.LOGIT_SCALE})
  unexpected = sorted(set(stored) - set(wanted) - {release.LOGIT_SCALE})
  resize, mismatched = [], []
  for k in sorted(set(wanted) & set(stored)):
    if wanted[k] != stored[k]:
      if any(re.search(p, k) for p in resizable):
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
    if temperature:
      lines.append(temperature)
    raise layout.CheckpointShapeError(
        f"checkpoint {loc.path} does not fit the model:\n" + "\n".join(lines))
  if temperature:
    raise layout.CheckpointShapeError(temperature)
  return resize


def restore_params(loc: layout.Located, abstract_params: PyTree, shardings: PyTree,
                   model: Any = None, drop_logit_scale: bool = True) -> PyTree:
  """Params of checkpoint `loc` in the model's shapes and shardings; position embeddings resized.

  Any other difference (missing, unexpected or differently shaped parameters) is one error that
  lists every offending parameter. `model` is needed only for the official release's names.
  `drop_logit_scale`: a learned temperature (`logit_scale`) the model does not have
  (learn_temperature off) is left out with a warning naming it, as the official code's
  partial restore leaves it out (a fixed-temperature ablation; zero-shot and retrieval ranks do
  not depend on it); False refuses it (an import must not lose a parameter).
  """
  flat_abstract = layout.flat(abstract_params)
  stored = stored_params(loc, model, drop_logit_scale)
  wanted = {k: tuple(v.shape) for k, v in flat_abstract.items()}
  flat_shardings = layout.flat(shardings)
  resize = check_fits(loc, wanted, stored.shapes, drop_logit_scale)
  dropped = release.LOGIT_SCALE in stored.shapes and release.LOGIT_SCALE not in wanted
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
  if dropped:  # read only for the warning (one scalar)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target[release.LOGIT_SCALE] = jax.ShapeDtypeStruct(stored.shapes[release.LOGIT_SCALE],
                                                       np.float32, sharding=one)
  arrays = stored.read(target)
  if dropped:
    release.warn_dropped_temperature(loc.path, jax.device_get(arrays.pop(release.LOGIT_SCALE)))
  for k in resize:
    logging.info("resizing %s from %s to %s", k, stored.shapes[k], wanted[k])
    host = np.asarray(jax.device_get(arrays[k]))
    resized = resize_position_embedding(host, wanted[k]).astype(flat_abstract[k].dtype)
    arrays[k] = jax.make_array_from_callback(wanted[k], flat_shardings[k],
                                             lambda idx, r=resized: r[idx])
  return traverse_util.unflatten_dict(arrays, sep="/")


def _default_shardings(abstract: PyTree) -> PyTree:
  device = jax.local_devices()[0]
  return jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(device), abstract)


def load_params(checkpoint_path: str, model: Any, partitioner: Any = None,
                drop_logit_scale: bool = True) -> PyTree:
  """The params of a checkpoint (MODEL_DIR = its latest step) for `model`, in any format.

  Sharded by the partitioner's rules if one is given, else on the first local device.
  `drop_logit_scale`: see `restore_params`.
  """
  loc = layout.locate(checkpoint_path)
  shapes = model.input_shapes()
  if partitioner is not None:
    abstract, specs = train_state_lib.params_specs(model, partitioner, shapes)
    shardings = jax.tree_util.tree_map(
        partitioner.sharding, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  else:
    abstract, _ = train_state_lib.abstract_params_and_axes(model, shapes)
    shardings = _default_shardings(abstract)
  return restore_params(loc, abstract, shardings, model, drop_logit_scale)


def read_arrays(checkpoint_path: str) -> Dict[str, np.ndarray]:
  """Every parameter of a checkpoint as flat {name: host array}, without a model.

  For tools and tests; the official release's names are returned as stored.
  """
  loc = layout.locate(checkpoint_path)
  if loc.format == layout.T5X_MSGPACK:
    ckpt = msgpack.read_located(loc)
    return {k: np.asarray(ckpt.read(k)) for k in ckpt.target}
  stored = stored_params(loc)
  device = jax.local_devices()[0]
  dtypes = _stored_dtypes(loc)
  target = {k: jax.ShapeDtypeStruct(s, dtypes[k],
                                    sharding=jax.sharding.SingleDeviceSharding(device))
            for k, s in stored.shapes.items()}
  return {k: np.asarray(v) for k, v in stored.read(target).items()}


def _stored_dtypes(loc: layout.Located) -> Dict[str, Any]:
  item = layout.STATE if loc.format == layout.T5X else layout.PARAMS
  tree = layout.pytree_metadata(loc.path / item)
  if loc.format == layout.T5X:
    tree = tree[layout.TARGET]
  return {k: v.dtype for k, v in layout.flat(tree).items()}
