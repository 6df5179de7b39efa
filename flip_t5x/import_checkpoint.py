r"""Imports an official FLIP release checkpoint into a flip_t5x checkpoint.

  python -m flip_t5x.import_checkpoint --source=/path/to/flip_base_checkpoint \
      --gin_file=gin_configs/models/flip_vit_b16.gin --output=/tmp/flip_b16 [--step=N] [--dry_run]

The FLIP release (github.com/facebookresearch/flip) was written by t5x's checkpointer of early
2023: a directory `checkpoint_<step>/` holding a msgpack file `checkpoint` with
`{"version": 3, "optimizer": {"target": params, "state": optimizer state}}`, where small arrays are
stored inline and the others are replaced by TensorStore specs (`{"driver": "zarr", "kvstore":
{"driver": "file", "path": "target.img_encoder.embedding.kernel"}, ...}`) naming zarr directories
beside the file (checkpoints written to gs:// carry `{"kvstore": {"driver": "gcs", ...}, "path":
...}` instead; the path is read relative to the checkpoint directory either way, as t5x does on
restore). `--source` may be that directory, the `checkpoint` file itself, or a directory of
`checkpoint_<step>/` directories (the latest step is taken, as FLIP's own restore does). Any other
checkpoint `flip_t5x.runtime.checkpoints.locate` reads (t5x.train's orbax layout, msgpack with this
project's names, an earlier flip_t5x layout) is accepted too: its parameters are checked and copied.

Only `target` (the parameters) is read; the optimizer state is ignored. Every official array is
mapped onto this project's parameter tree (see `mapping_table`); the mapping is a pure C-order
reshape in every case because the release's layouts flatten the same axes in the same order ours
keep separate (t5x's DenseGeneral stores q/k/v kernels as [W, heads*head_dim], the patch embedding
is a [p, p, 3, W] conv kernel over (row, column, channel) patches, exactly our patchify order). The
gin file gives the model, so every shape is checked before anything is read: a checkpoint of
another size, a missing array or a wrong gin file fails with the parameter names and both shapes.
The image position table the release stores is the fixed 2-D sin-cos one our network computes; it
is checked, not copied. The result is written with `flip_t5x.runtime.checkpoints.save_params` in
t5x's orbax layout. (`flip_t5x.eval`, `FlipPredictor.from_checkpoint` and `INITIAL_CHECKPOINT_PATH`
also read the release directly, through the same mapping; importing checks and converts it once.)
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

import dataclasses
import os
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from absl import app
from absl import flags
from absl import logging
from flax import serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import tensorstore as ts

from flip_t5x import models
from flip_t5x import network
from flip_t5x.data import vocabulary as vocabulary_lib
from flip_t5x.runtime import checkpoints
from flip_t5x.runtime import gin_utils

PyTree = Any
Leaf = Union[np.ndarray, "ts.TensorStore"]
OurPath = Tuple[str, ...]

# Names used by the official models_flip.py.
OFFICIAL_TOWERS = {"image_tower": "img_encoder", "text_tower": "txt_encoder"}
OFFICIAL_PROJECTIONS = {"image_tower": "img_mlp1", "text_tower": "txt_mlp1"}
OFFICIAL_IMAGE_POS_EMBED = "img_encoder/posembed_encoder/pos_embedding"
# Our block sub-module -> the official one (flax auto-names inside Encoder1DBlock).
_BLOCK_SUBMODULES = {
    ("pre_attention_layer_norm",): ("LayerNorm_0",),
    ("attention", "query"): ("MultiHeadDotProductAttention_0", "query"),
    ("attention", "key"): ("MultiHeadDotProductAttention_0", "key"),
    ("attention", "value"): ("MultiHeadDotProductAttention_0", "value"),
    ("attention", "out"): ("MultiHeadDotProductAttention_0", "out"),
    ("pre_mlp_layer_norm",): ("LayerNorm_1",),
    ("mlp", "wi"): ("MlpBlock_0", "Dense_0"),
    ("mlp", "wo"): ("MlpBlock_0", "Dense_1"),
}
_BLOCK_RE = re.compile(r"^block_(\d+)$")
_OFFICIAL_BLOCK_RE = re.compile(r"^(img|txt)_encoder/Transformer/encoderblock_(\d+)/")


class CheckpointError(ValueError):
  """The source is not a readable t5x checkpoint."""


class CheckpointMismatchError(ValueError):
  """The checkpoint does not fit the gin model; names the mismatched parameters and shapes.

  `problems` holds one line per problem (the message lists the first few).
  """

  def __init__(self, message: str, problems: Sequence[str] = ()):
    super().__init__(message)
    self.problems = list(problems)


# ------------------------------------------------------------------------------------------------
# Reading the t5x checkpoint.
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
  """The directory holding the msgpack `checkpoint` file for `source` (see module docstring)."""
  if os.path.isfile(source):
    return os.path.dirname(os.path.abspath(source))
  if not os.path.isdir(source):
    raise CheckpointError(f"checkpoint source {source!r} does not exist")
  if os.path.isfile(os.path.join(source, "checkpoint")):
    return source
  steps = []
  for name in os.listdir(source):
    m = re.fullmatch(r"checkpoint_(\d+)", name)
    if m and os.path.isfile(os.path.join(source, name, "checkpoint")):
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
  with open(os.path.join(ckpt_dir, "checkpoint"), "rb") as f:
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


# ------------------------------------------------------------------------------------------------
# The name/layout mapping.
def official_name(path: OurPath) -> str:
  """The official (models_flip.py) name of one of our parameters, '/'-joined."""
  tower = path[0]
  if path == ("logit_scale",):
    return "logit_scale"
  if tower not in OFFICIAL_TOWERS:
    raise KeyError(f"no official counterpart for parameter {'/'.join(path)}")
  off = OFFICIAL_TOWERS[tower]
  rest = path[1:]
  if rest[0] == "projection":
    return "/".join((OFFICIAL_PROJECTIONS[tower],) + rest[1:])
  if rest[:2] == ("patch_embed", "embedding"):
    return "/".join((off, "embedding") + rest[2:])
  if rest == ("cls",):
    return f"{off}/cls"
  if rest == ("token_embedding",):
    return f"{off}/token_embedding/embedding"
  if rest == ("pos_embedding",):
    return f"{off}/posembed_encoder/pos_embedding"
  if rest[0] == "encoder":
    if rest[1] == "encoder_norm":
      return "/".join((off, "Transformer", "encoder_norm") + rest[2:])
    m = _BLOCK_RE.match(rest[1])
    if m:
      leaf = rest[-1]
      sub = _BLOCK_SUBMODULES.get(tuple(rest[2:-1]))
      if sub is not None:
        block = "encoderblock_{:02d}".format(int(m.group(1)))
        return "/".join((off, "Transformer", block) + sub + (leaf,))
  raise KeyError(f"no official counterpart for parameter {'/'.join(path)}")


def official_shape(path: OurPath, shape: Sequence[int], module: network.FlipTwoTower
                   ) -> Tuple[int, ...]:
  """The shape the official checkpoint stores for our parameter `path` of shape `shape`."""
  shape = tuple(int(d) for d in shape)
  leaf = path[-1]
  if path == ("image_tower", "patch_embed", "embedding", "kernel"):
    p = module.patch_size
    return (p, p, shape[0] // (p * p), shape[1])  # conv kernel [p, p, 3, W]
  if path == ("image_tower", "cls"):
    return (1, 1) + shape
  if path == ("text_tower", "pos_embedding"):
    return (1,) + shape
  if path == ("logit_scale",):
    return (1,)
  if len(path) >= 3 and path[-3] == "attention":
    proj = path[-2]
    if proj in ("query", "key", "value"):
      # t5x DenseGeneral keeps the 2-D [W, heads*head_dim] matrix and a [heads*head_dim] bias.
      return (shape[0], shape[1] * shape[2]) if leaf == "kernel" else (shape[0] * shape[1],)
    if proj == "out" and leaf == "kernel":
      return (shape[0] * shape[1], shape[2])
  return shape


@dataclasses.dataclass(frozen=True)
class MappingEntry:
  official: str
  ours: str
  official_shape: Tuple[int, ...]
  our_shape: Tuple[int, ...]


def _our_shapes(model: models.FlipModel) -> Dict[OurPath, Tuple[int, ...]]:
  """Parameter shapes from `jax.eval_shape` (nothing is allocated, even for ViT-H)."""
  m = model.module
  shapes = {"images": (1, m.image_size, m.image_size, 3), "texts": (1, m.text_length)}
  variables = jax.eval_shape(lambda rng: model.get_initial_variables(rng, shapes),
                             jax.random.PRNGKey(0))
  flat = traverse_util.flatten_dict(variables["params"])
  return {tuple(k): tuple(int(d) for d in v.shape) for k, v in flat.items()}


def mapping_table(model: models.FlipModel) -> List[MappingEntry]:
  """Every parameter of `model` with its official name and both layouts (shapes only)."""
  return [MappingEntry(official_name(p), "/".join(p), official_shape(p, s, model.module), s)
          for p, s in sorted(_our_shapes(model).items())]


def image_pos_embedding(module: network.FlipTwoTower) -> np.ndarray:
  """The official [1, 1 + N, W] image position table: a zero CLS row + our fixed sin-cos."""
  g = module.image_size // module.patch_size
  table = network.sincos_pos_embed_2d(g, g, module.image_width)
  return np.concatenate([np.zeros((1, module.image_width), np.float32), table])[None]


def describe_official(names_and_shapes: Mapping[str, Tuple[int, ...]]) -> str:
  """A one-line guess of the checkpoint's model size (to explain size mismatches)."""
  s = names_and_shapes
  parts = []
  k = s.get("img_encoder/embedding/kernel")
  if k is not None and len(k) == 4:
    parts.append(f"patch {k[0]}, image width {k[3]}")
  for tower, label in (("img", "image"), ("txt", "text")):
    blocks = {int(m.group(2)) for n in s for m in [_OFFICIAL_BLOCK_RE.match(n)]
              if m and m.group(1) == tower}
    if blocks:
      parts.append(f"{label} depth {max(blocks) + 1}")
  pos = s.get(OFFICIAL_IMAGE_POS_EMBED)
  if pos is not None and len(pos) == 3:
    g = int(round((pos[1] - 1) ** 0.5))
    if k is not None and len(k) == 4:
      parts.append(f"image size {g * k[0]}")
  t = s.get("txt_encoder/token_embedding/embedding")
  if t is not None and len(t) == 2:
    parts.append(f"vocab {t[0]}, text width {t[1]}")
  p = s.get("txt_encoder/posembed_encoder/pos_embedding")
  if p is not None and len(p) == 3:
    parts.append(f"text length {p[1]}")
  j = s.get("img_mlp1/kernel")
  if j is not None and len(j) == 2:
    parts.append(f"embed dim {j[1]}")
  return ", ".join(parts) or "unrecognised"


def describe_model(module: network.FlipTwoTower) -> str:
  m = module
  return (f"patch {m.patch_size}, image width {m.image_width}, image depth {m.image_depth}, "
          f"text depth {m.text_depth}, image size {m.image_size}, vocab {m.vocab_size}, "
          f"text width {m.text_width}, text length {m.text_length}, embed dim {m.embed_dim}")


_MAX_LISTED = 20


def _grouped(messages: Mapping[str, str], what: str) -> List[str]:
  """Per-array messages, with whole runs of encoder blocks (a depth mismatch) in one line."""
  blocks: Dict[str, Dict[int, int]] = {}
  for name in messages:
    m = _OFFICIAL_BLOCK_RE.match(name)
    if m:
      counts = blocks.setdefault(m.group(1), {})
      counts[int(m.group(2))] = counts.get(int(m.group(2)), 0) + 1
  summarised = {t for t, counts in blocks.items() if len(counts) > 1}
  out = []
  for t in sorted(summarised):
    idx = sorted(blocks[t])
    out.append(f"{len(idx)} blocks {what}: {t}_encoder/Transformer/encoderblock_{idx[0]:02d} to "
               f"encoderblock_{idx[-1]:02d} ({sum(blocks[t].values())} arrays)")
  for name, msg in sorted(messages.items()):
    m = _OFFICIAL_BLOCK_RE.match(name)
    if not (m and m.group(1) in summarised):
      out.append(msg)
  return out


def _raise_mismatches(problems: List[str], ckpt: T5xCheckpoint, model: models.FlipModel) -> None:
  listed = problems[:_MAX_LISTED]
  more = len(problems) - len(listed)
  shapes = {n: ckpt.shape(n) for n in ckpt.target}
  raise CheckpointMismatchError(
      f"checkpoint {ckpt.path} does not fit the gin model ({len(problems)} problem(s)):\n  "
      + "\n  ".join(listed) + (f"\n  ... and {more} more" if more > 0 else "")
      + f"\ncheckpoint looks like: {describe_official(shapes)}"
      + f"\ngin model is:          {describe_model(model.module)}"
      + "\nPass the gin file of the checkpoint's model size.", problems)


def convert_params(ckpt: T5xCheckpoint, model: models.FlipModel) -> PyTree:
  """Official `target` arrays -> this project's params tree (float32), after checking all shapes.

  Raises:
    CheckpointMismatchError: naming every parameter whose array is missing, has the wrong shape
      or has no counterpart in the model, with both shapes.
  """
  module = model.module
  entries = mapping_table(model)
  mismatched, missing, unexpected = [], {}, {}
  used = set()
  for e in entries:
    if e.official not in ckpt.target:
      missing[e.official] = (f"missing array {e.official} (for {e.ours}, expected shape "
                             f"{e.official_shape})")
      continue
    used.add(e.official)
    got = ckpt.shape(e.official)
    if got != e.official_shape:
      mismatched.append(f"{e.official}: checkpoint shape {got} != shape {e.official_shape} "
                        f"expected by the model (our {e.ours} {e.our_shape})")
  # Arrays the model has no parameter for: the fixed image position table (checked below) and
  # zero projection biases are fine; anything else means the sizes differ.
  expected_pos = image_pos_embedding(module)
  for name in sorted(set(ckpt.target) - used):
    if name == OFFICIAL_IMAGE_POS_EMBED:
      got = ckpt.shape(name)
      if got != expected_pos.shape:
        mismatched.append(f"{name}: checkpoint shape {got} != shape {expected_pos.shape} of the "
                          f"model's fixed sin-cos table (image size {module.image_size}, patch "
                          f"{module.patch_size}, width {module.image_width})")
      continue
    if name in ("img_mlp1/bias", "txt_mlp1/bias"):
      continue  # checked after the shape pass (needs reading)
    unexpected[name] = (f"unexpected array {name} {ckpt.shape(name)}: the model has no such "
                        "parameter")
  # Arrays outside the blocks (patch/token embeddings, projections) say most about the size.
  in_block = [m for m in mismatched if _OFFICIAL_BLOCK_RE.match(m)]
  problems = (sorted(set(mismatched) - set(in_block))
              + _grouped(missing, "missing from the checkpoint")
              + _grouped(unexpected, "in the checkpoint but not in the model") + sorted(in_block))
  if problems:
    _raise_mismatches(problems, ckpt, model)

  if OFFICIAL_IMAGE_POS_EMBED in ckpt.target:
    stored = ckpt.read(OFFICIAL_IMAGE_POS_EMBED)
    err = float(np.max(np.abs(stored.astype(np.float32) - expected_pos)))
    # The table's values lie in [-1, 1]: a checkpoint saved in bfloat16 (t5x's
    # SaveCheckpointConfig.dtype) rounds them by up to half its epsilon.
    if err > max(1e-4, float(jnp.finfo(stored.dtype).eps)):
      raise CheckpointMismatchError(
          f"{OFFICIAL_IMAGE_POS_EMBED} differs from the fixed 2-D sin-cos table this model "
          f"computes (max abs difference {err:.3g}); learned image position embeddings are not "
          "supported.")
  for name in ("img_mlp1/bias", "txt_mlp1/bias"):
    if name in ckpt.target and np.any(ckpt.read(name)):
      raise CheckpointMismatchError(
          f"{name} {ckpt.shape(name)} is non-zero, but the model's projections have no bias "
          "(FLIP's configs use proj_out_bias=False)")

  flat = {}
  for e in entries:
    arr = ckpt.read(e.official)
    flat[tuple(e.ours.split("/"))] = np.asarray(arr, np.float32).reshape(e.our_shape)
  return traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------------------------
# Import.
def has_official_names(names: Sequence[str]) -> bool:
  """Whether t5x checkpoint parameter names are the official release's (img_encoder/...)."""
  return any(name.split("/")[0] in OFFICIAL_TOWERS.values() for name in names)


def import_checkpoint(source: str, model: models.FlipModel, output: Optional[str],
                      step: Optional[int] = None) -> Tuple[PyTree, int]:
  """Reads, checks and converts `source`; writes `output/checkpoint_<step>` (unless None).

  `source`: the official release (t5x msgpack, official names), or anything else
  `checkpoints.locate` reads (t5x's orbax layout, a msgpack checkpoint of this project's names,
  an earlier flip_t5x layout), whose parameters are copied after the same shape checks.
  Returns (params, step); `step` defaults to the checkpoint's optimizer step (0 if absent), so
  the imported weights keep the step they were trained for.

  Raises:
    checkpoints.NoCheckpointError: nothing readable at `source`.
  """
  found = checkpoints.locate(source)
  ckpt = read_t5x_checkpoint(source) if found.format == checkpoints.T5X_MSGPACK else None
  if ckpt is not None and has_official_names(ckpt.target):
    logging.info("read t5x checkpoint %s (version %s, step %s, %d arrays)", ckpt.path,
                 ckpt.version, ckpt.step, len(ckpt.target))
    params = convert_params(ckpt, model)
    stored_step = ckpt.step
  else:
    params = jax.device_get(checkpoints.load_params(source, model))
    stored_step = checkpoints.checkpoint_step(source)
    logging.info("read %s checkpoint %s (step %s)", found.format, found.path, stored_step)
  if step is None:
    step = stored_step if stored_step is not None else 0
  if output is not None:
    path = checkpoints.save_params(params, output, step)
    logging.info("wrote flip_t5x checkpoint %s", path)
  return params, step



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
  vocabulary_lib.warn_unless_official_vocabulary(vocabulary_lib.wordpiece_vocab_file(),
                                                 "import_checkpoint")
  if FLAGS.dry_run:
    for e in mapping_table(model):
      print(f"{e.official} {e.official_shape} -> {e.ours} {e.our_shape}")
  try:
    _, step = import_checkpoint(FLAGS.source, model, None if FLAGS.dry_run else FLAGS.output,
                                FLAGS.step)
  except checkpoints.NoCheckpointError as e:  # the path and what is there, exit status 2
    print(f"import_checkpoint: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except (CheckpointError, CheckpointMismatchError, checkpoints.CheckpointShapeError) as e:
    raise SystemExit(f"import_checkpoint: {e}") from e  # the message is the whole story
  print(f"imported {FLAGS.source} (step {step})"
        + ("" if FLAGS.dry_run else f" -> {FLAGS.output}/checkpoint_{step}"))


if __name__ == "__main__":
  _define_flags()
  gin_utils.run(main)
