"""The official FLIP release's parameter names and layouts -> this project's parameter tree.

Every official array (models_flip.py's names) maps onto one of our parameters (see
`mapping_table`); the mapping is a pure C-order reshape in every case because the release's
layouts flatten the same axes in the same order ours keep separate (t5x's DenseGeneral stores
q/k/v kernels as [W, heads*head_dim], the patch embedding is a [p, p, 3, W] conv kernel over
(row, column, channel) patches, exactly our patchify order). Every shape is checked before
anything is read: a checkpoint of another size, a missing array or a wrong gin file fails with the
parameter names and both shapes. The image position table the release stores is the fixed 2-D
sin-cos one our network computes; it is checked, not copied.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from flip_t5x import models
from flip_t5x import network
from flip_t5x.checkpoints.msgpack import T5xCheckpoint

PyTree = Any
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
# The learned temperature: one parameter, the same name in the release and here; the model has it
# only with this switch on (the official clr.tau_learnable).
LOGIT_SCALE = "logit_scale"
LEARN_TEMPERATURE = "network.FlipTwoTower.learn_temperature"


class CheckpointMismatchError(ValueError):
  """The checkpoint does not fit the gin model; names the mismatched parameters and shapes.

  `problems` holds one line per problem (the message lists the first few).
  """

  def __init__(self, message: str, problems: Sequence[str] = ()):
    super().__init__(message)
    self.problems = list(problems)


def temperature_problem(path: Any, in_model: bool, in_checkpoint: bool,
                        drop_logit_scale: bool) -> Optional[str]:
  """One line when the checkpoint's temperature (learned or fixed) is not the model's, naming the
  switch; None when they agree, or when a learned one may be left out (`drop_logit_scale`: the
  caller warns with `warn_dropped_temperature`).

  A learned `logit_scale` is no size: the sizes match, and "pass the gin file of the checkpoint's
  size" would mislead.
  """
  if in_model == in_checkpoint or (in_checkpoint and drop_logit_scale):
    return None
  if in_model:
    return (f"checkpoint {path} has no {LOGIT_SCALE}: it was trained with a fixed temperature, "
            f"but the model learns one ({LEARN_TEMPERATURE} = True); set {LEARN_TEMPERATURE} = "
            "False (and network.FlipTwoTower.fixed_temperature to the one it was trained with)")
  return (f"checkpoint {path} has a learned temperature ({LOGIT_SCALE}), but the model's is fixed "
          f"({LEARN_TEMPERATURE} = False); set {LEARN_TEMPERATURE} = True to keep it")


def warn_dropped_temperature(path: Any, logit_scale: Any) -> None:
  """Says that the checkpoint's learned temperature is left out (a fixed-temperature model)."""
  value = float(np.asarray(logit_scale, np.float32).reshape(-1)[0])
  temperature = math.exp(-min(max(value, 0.0), network.LOGIT_SCALE_MAX))
  logging.warning(
      "%s: the checkpoint's learned temperature (%s: temperature %.4g) is left out; the model "
      "uses network.FlipTwoTower.fixed_temperature instead (%s = False); set it to True to use "
      "the checkpoint's", path, LOGIT_SCALE, temperature, LEARN_TEMPERATURE)


def official_name(path: OurPath) -> str:
  """The official (models_flip.py) name of one of our parameters, '/'-joined."""
  tower = path[0]
  if path == (LOGIT_SCALE,):
    return LOGIT_SCALE
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
    p = module.image.patch_size
    return (p, p, shape[0] // (p * p), shape[1])  # conv kernel [p, p, 3, W]
  if path == ("image_tower", "cls"):
    return (1, 1) + shape
  if path == ("text_tower", "pos_embedding"):
    return (1,) + shape
  if path == (LOGIT_SCALE,):
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
  shapes = model.input_shapes()
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
  image = module.image
  g = image.image_size // image.patch_size
  table = network.sincos_pos_embed_2d(g, g, image.width)
  return np.concatenate([np.zeros((1, image.width), np.float32), table])[None]


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
  i, t = module.image, module.text
  return (f"patch {i.patch_size}, image width {i.width}, image depth {i.depth}, "
          f"text depth {t.depth}, image size {i.image_size}, vocab {t.vocab_size}, "
          f"text width {t.width}, text length {t.max_length}, embed dim {module.embed_dim}")


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


def convert_params(ckpt: T5xCheckpoint, model: models.FlipModel,
                   drop_logit_scale: bool = False) -> PyTree:
  """Official `target` arrays -> this project's params tree (float32), after checking all shapes.

  `drop_logit_scale`: a learned temperature the model does not have (learn_temperature off) is
  left out with a warning instead of refused.

  Raises:
    CheckpointMismatchError: naming every parameter whose array is missing, has the wrong shape
      or has no counterpart in the model, with both shapes; or the temperature alone, one line.
  """
  module = model.module
  entries = mapping_table(model)
  model_learns = any(e.official == LOGIT_SCALE for e in entries)
  temperature = temperature_problem(ckpt.path, model_learns, LOGIT_SCALE in ckpt.target,
                                    drop_logit_scale)
  mismatched, missing, unexpected = [], {}, {}
  used = set()
  for e in entries:
    if e.official not in ckpt.target:
      if e.official != LOGIT_SCALE:  # the temperature: above
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
                          f"model's fixed sin-cos table (image size {module.image.image_size}, "
                          f"patch {module.image.patch_size}, width {module.image.width})")
      continue
    if name in ("img_mlp1/bias", "txt_mlp1/bias"):
      continue  # checked after the shape pass (needs reading)
    if name == LOGIT_SCALE:
      continue  # the temperature: above
    unexpected[name] = (f"unexpected array {name} {ckpt.shape(name)}: the model has no such "
                        "parameter")
  # Arrays outside the blocks (patch/token embeddings, projections) say most about the size.
  in_block = [m for m in mismatched if _OFFICIAL_BLOCK_RE.match(m)]
  problems = (sorted(set(mismatched) - set(in_block))
              + _grouped(missing, "missing from the checkpoint")
              + _grouped(unexpected, "in the checkpoint but not in the model") + sorted(in_block))
  if temperature and not problems:
    raise CheckpointMismatchError(temperature, [temperature])
  if problems:
    _raise_mismatches(problems + ([temperature] if temperature else []), ckpt, model)
  if LOGIT_SCALE in ckpt.target and not model_learns:
    warn_dropped_temperature(ckpt.path, ckpt.read(LOGIT_SCALE))

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


def has_official_names(names: Sequence[str]) -> bool:
  """Whether t5x checkpoint parameter names are the official release's (img_encoder/...)."""
  return any(name.split("/")[0] in OFFICIAL_TOWERS.values() for name in names)
