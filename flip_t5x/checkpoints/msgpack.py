"""t5x's legacy checkpoints: a msgpack `checkpoint` file and TensorStore arrays beside it.

The FLIP release (github.com/facebookresearch/flip) was written by t5x's checkpointer of early
2023: a directory `checkpoint_<step>/` holding a msgpack file `checkpoint` with
`{"version": 3, "optimizer": {"target": params, "state": optimizer state}}`, where small arrays are
stored inline and the others are replaced by TensorStore specs (`{"driver": "zarr", "kvstore":
{"driver": "file", "path": "target.img_encoder.embedding.kernel"}, ...}`) naming zarr directories
beside the file (checkpoints written to gs:// carry `{"kvstore": {"driver": "gcs", ...}, "path":
...}` instead; the path is read relative to the checkpoint directory either way, as t5x does on
restore). Only `target` (the parameters) and the step are read; arrays open lazily.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from absl import logging
from flax import serialization
import numpy as np
import tensorstore as ts

from flip_t5x.checkpoints import layout

Leaf = Union[np.ndarray, "ts.TensorStore"]


class CheckpointError(ValueError):
  """The source is not a readable t5x checkpoint."""


@dataclasses.dataclass
class T5xCheckpoint:
  """The `target` arrays of a t5x checkpoint, opened lazily (only read on `read`)."""

  path: str  # the checkpoint_<step> directory
  target: Dict[str, Leaf]  # "img_encoder/embedding/kernel" -> inline array or open TensorStore
  step: Optional[int]
  version: Optional[int]

  def shape(self, name: str) -> Tuple[int, ...]:
    return tuple(int(d) for d in self.target[name].shape)

  def read(self, name: str) -> np.ndarray:
    leaf = self.target[name]
    if isinstance(leaf, np.ndarray):
      return leaf
    try:
      return np.asarray(leaf.read().result())
    except Exception as e:  # tensorstore raises ValueError subclasses with the OS error inside
      raise CheckpointError(f"cannot read array {name!r} of {self.path}: {e}") from e


def locate_checkpoint(source: str) -> str:
  """The directory of the msgpack `checkpoint` file.

  `source` may be that directory, the file itself, or a directory of `checkpoint_<step>/`
  directories (the latest step is taken, as FLIP's own restore does).
  """
  if os.path.isfile(source):
    return os.path.dirname(os.path.abspath(source))
  if not os.path.isdir(source):
    raise CheckpointError(f"checkpoint source {source!r} does not exist")
  if os.path.isfile(os.path.join(source, layout.MSGPACK_FILE)):
    return source
  steps = []
  for name in os.listdir(source):
    m = re.fullmatch(r"checkpoint_(\d+)", name)
    if m and os.path.isfile(os.path.join(source, name, layout.MSGPACK_FILE)):
      steps.append((int(m.group(1)), name))
  if not steps:
    raise CheckpointError(
        f"no t5x checkpoint in {source!r}: expected a msgpack file 'checkpoint' there or in "
        "checkpoint_<step>/ subdirectories")
  return os.path.join(source, max(steps)[1])


def _is_ts_spec(x: Any) -> bool:
  return isinstance(x, dict) and "driver" in x and ("kvstore" in x or "base" in x or "path" in x)


def _open_ts(spec: Mapping[str, Any], ckpt_dir: str, name: str) -> "ts.TensorStore":
  """Opens a t5x-written TensorStore spec, resolving its path relative to the checkpoint dir."""
  spec = dict(spec)
  if spec.get("driver") == "cast" and isinstance(spec.get("base"), dict):
    spec = dict(spec["base"])
  kvstore = spec.get("kvstore")
  path = spec.get("path")  # gcs-era specs keep the relative path at the top level
  if isinstance(kvstore, dict) and kvstore.get("path"):
    path = kvstore["path"]
  if isinstance(kvstore, str) and not path:
    path = kvstore.split("://", 1)[-1]
  if not path:
    raise CheckpointError(f"array {name!r}: TensorStore spec without a path: {spec}")
  path = str(path)
  if not os.path.isabs(path):
    path = os.path.join(ckpt_dir, path)
  if not os.path.exists(path):
    # Specs written on another machine may hold an absolute path; the data sits beside the file.
    local = os.path.join(ckpt_dir, os.path.basename(path.rstrip("/")))
    if not os.path.exists(local):
      raise CheckpointError(
          f"array {name!r} is missing: its zarr directory {path!r} does not exist")
    path = local
  driver = spec.get("driver", "zarr")
  try:
    return ts.open({"driver": driver, "kvstore": {"driver": "file", "path": path}},
                   open=True, read=True).result()
  except Exception as e:
    raise CheckpointError(f"cannot open array {name!r} at {path!r}: {e}") from e


def _flatten(tree: Any, prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], Any]:
  """Nested dicts -> {path: leaf}; TensorStore specs count as leaves, empty dicts/None vanish."""
  if _is_ts_spec(tree):
    return {prefix: tree}
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
    return out
  if tree is None:
    return {}
  return {prefix: tree}


def read_t5x_checkpoint(source: str) -> T5xCheckpoint:
  """Parses the msgpack tree of a t5x checkpoint and opens the `target` arrays."""
  ckpt_dir = locate_checkpoint(source)
  with open(os.path.join(ckpt_dir, layout.MSGPACK_FILE), "rb") as f:
    data = f.read()
  try:
    tree = serialization.msgpack_restore(data)
  except Exception as e:
    raise CheckpointError(f"{ckpt_dir}/checkpoint is not a t5x msgpack checkpoint: {e}") from e
  if not isinstance(tree, dict) or not isinstance(tree.get("optimizer"), dict):
    raise CheckpointError(f"{ckpt_dir}/checkpoint has no 'optimizer' tree (keys: "
                          f"{sorted(tree) if isinstance(tree, dict) else type(tree).__name__}); "
                          "is it a t5x checkpoint?")
  state = tree["optimizer"]
  if not isinstance(state.get("target"), dict):
    raise CheckpointError(f"{ckpt_dir}/checkpoint has no optimizer/target (the parameters)")
  target = {}
  for path, leaf in _flatten(state["target"]).items():
    name = "/".join(path)
    if _is_ts_spec(leaf):
      target[name] = _open_ts(leaf, ckpt_dir, name)
    else:
      target[name] = np.asarray(leaf)
  step = None
  raw_step = state.get("state", {}).get("step") if isinstance(state.get("state"), dict) else None
  if raw_step is not None:
    try:
      step = int(np.asarray(_open_ts(raw_step, ckpt_dir, "state/step").read().result()
                            if _is_ts_spec(raw_step) else raw_step))
    except (CheckpointError, TypeError, ValueError) as e:
      logging.warning("could not read the step of %s: %s", ckpt_dir, e)
  version = tree.get("version")
  return T5xCheckpoint(path=ckpt_dir, target=target, step=step,
                       version=int(version) if version is not None else None)


def read_located(loc: layout.Located) -> T5xCheckpoint:
  """The msgpack checkpoint `locate` found; an unreadable one is a NoCheckpointError."""
  try:
    return read_t5x_checkpoint(os.fspath(loc.path))
  except CheckpointError as e:
    raise layout.NoCheckpointError(f"no readable checkpoint at {loc.path}: {e}") from None
