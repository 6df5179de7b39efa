"""FLIP's optimizers and learning-rate schedule, as gin-configurable optax transformations.

Gin files bind `OPTIMIZER = @optimizers.adamw()` (or `@optimizers.amos()`), and
`LEARNING_RATE = @optimizers.warmup_cosine_schedule()` for both the optimizer and the trainer's
learning-rate summary. Lengths given in "ImageNet epochs", as the official configs give them, become
steps with `epochs_to_steps` (e.g. `TRAIN_STEPS = @train_steps/optimizers.epochs_to_steps()`).
`wrap` puts the optax transformation in what `model.optimizer_def` must be (`t5x_interop` decides:
t5x's `OptaxWrapper` under upstream t5x's programs, for `t5x.train`, else `OptaxOptimizer`);
`unwrap` returns the transformation and `hyperparameters` what it was built with, either way.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import optax

from flip_t5x.runtime import t5x_interop

PyTree = Any
Schedule = Callable[[Any], Any]

IMAGENET_EPOCH_SAMPLES = 1_281_167  # the official config's samples_per_epoch: one "virtual" epoch
BASE_BATCH_SIZE = 256

# What the official code leaves undecayed (utils/opt_util.py: filter_bias_and_norm and
# filter_posembed): biases, normalisation scales and position embeddings. The CLS token and
# `logit_scale` are decayed. Attention biases are 2-D ([heads, head_dim]): matched by name.
NO_DECAY_PATTERNS = (r"(^|/)bias$", r"(^|/)scale$", r"pos_embed")


def _number(value: Any, name: str) -> Optional[float]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}); "
                    "check the macro bound to it (e.g. TRAIN_STEPS)")
  return float(value)


def steps_per_epoch(batch_size: int, epoch_samples: int = IMAGENET_EPOCH_SAMPLES) -> int:
  """Whole steps in one ImageNet epoch, as the official train.py counts them:
  samples_per_epoch // batch_size (19 at a batch of 65,536)."""
  _number(batch_size, "batch_size")
  if int(batch_size) != batch_size or not 0 < batch_size <= epoch_samples:
    raise ValueError(f"batch_size must be a whole number in 1..{epoch_samples:,} to count "
                     f"steps in epochs, got {batch_size!r}")
  return epoch_samples // int(batch_size)


def epochs_to_steps(epochs: float, batch_size: int) -> int:
  """Steps in `epochs` ImageNet epochs: epochs x steps_per_epoch, rounded down.

  The official code trains num_epochs x (1,281,167 // batch) steps and warms up over
  warmup_epochs x that many, so 10,000 epochs at 65,536 are 190,000 steps, 40 are 760.
  """
  value = _number(epochs, "epochs_to_steps.epochs (e.g. TRAIN_EPOCHS or WARMUP_EPOCHS)")
  if value is None or value < 0:
    raise ValueError(f"epochs_to_steps.epochs must be a number >= 0, got {epochs!r}: set the "
                     "epochs macro bound to it (TRAIN_EPOCHS or WARMUP_EPOCHS) or give the steps")
  return int(math.floor(value * steps_per_epoch(batch_size)))


def peak_learning_rate(base_learning_rate: float, batch_size: int,
                       base_batch_size: int = BASE_BATCH_SIZE) -> float:
  """FLIP's linear scaling rule: lr = base_lr x batch / 256."""
  return float(base_learning_rate) * float(batch_size) / float(base_batch_size)


@dataclasses.dataclass(frozen=True)
class WarmupCosineSchedule:
  """The official schedule (t5x/train_state_initializer.py: create_learning_rate_fn): linear from
  `warmup_start_learning_rate` (the official `warmup_abs_lr`, 0) to the peak over `warmup_steps`,
  then half-cosine to `end_learning_rate` (`min_abs_lr`, 0) at `total_steps`.

  Step `s` trains at the rate of `s`, so the first step of a warmed-up run trains at 0, as the
  official optax schedule does. Kept as fields so reports read the configured values.
  """
  base_learning_rate: float
  batch_size: int
  total_steps: float
  warmup_steps: float = 0.0
  base_batch_size: int = BASE_BATCH_SIZE
  end_learning_rate: float = 0.0
  warmup_start_learning_rate: float = 0.0

  @property
  def peak_learning_rate(self) -> float:
    return peak_learning_rate(self.base_learning_rate, self.batch_size, self.base_batch_size)

  @property
  def steps_per_epoch(self) -> int:
    return steps_per_epoch(self.batch_size)

  def __call__(self, step):
    peak, warmup, total = self.peak_learning_rate, self.warmup_steps, self.total_steps
    end, start = self.end_learning_rate, self.warmup_start_learning_rate
    step = jnp.asarray(step, jnp.float32)
    warm = start + (peak - start) * step / max(warmup, 1.0)
    progress = jnp.clip((step - warmup) / max(total - warmup, 1.0), 0.0, 1.0)
    cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step < warmup, warm, cosine)


def warmup_cosine_schedule(base_learning_rate: float, batch_size: int, total_steps: float,
                           warmup_steps: Optional[float] = 0,
                           base_batch_size: int = BASE_BATCH_SIZE,
                           end_learning_rate: float = 0.0,
                           warmup_start_learning_rate: float = 0.0) -> WarmupCosineSchedule:
  """FLIP's schedule, peak base_lr x batch/256; lengths in steps (see `epochs_to_steps`)."""
  _number(base_learning_rate, "warmup_cosine_schedule.base_learning_rate")
  _number(batch_size, "warmup_cosine_schedule.batch_size")
  total = _number(total_steps, "warmup_cosine_schedule.total_steps")
  if total is None:
    raise ValueError("warmup_cosine_schedule.total_steps is required (TRAIN_STEPS)")
  warmup = _number(warmup_steps, "warmup_cosine_schedule.warmup_steps") or 0.0
  if warmup > total:
    raise ValueError(f"warmup ({warmup:g} steps) is longer than training ({total:g} steps): "
                     "set WARMUP_STEPS (or WARMUP_EPOCHS) below TRAIN_STEPS")
  return WarmupCosineSchedule(base_learning_rate=float(base_learning_rate),
                              batch_size=batch_size, total_steps=total_steps,
                              warmup_steps=warmup_steps or 0, base_batch_size=base_batch_size,
                              end_learning_rate=float(end_learning_rate),
                              warmup_start_learning_rate=float(warmup_start_learning_rate))


def _path_name(path: Tuple[Any, ...]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def weight_decay_mask(params: PyTree, no_decay_patterns: Sequence[str] = NO_DECAY_PATTERNS,
                      decay_min_ndim: int = 0) -> PyTree:
  """True where AdamW decays: every parameter of at least `decay_min_ndim` dimensions whose
  path matches none of `no_decay_patterns`. The defaults are the official mask (biases,
  normalisation scales and position embeddings exempt); `decay_min_ndim=2` decays matrices only.

  The mask has the container types of `params` (t5x's OptaxWrapper passes a FrozenDict).
  """
  def decays(path, leaf):
    name = _path_name(path)
    return (len(leaf.shape) >= decay_min_ndim
            and not any(re.search(p, name) for p in no_decay_patterns))

  return jax.tree_util.tree_map_with_path(decays, params)


def undecayed_parameters(mask: PyTree) -> List[str]:
  """Paths of the parameters a `weight_decay_mask` leaves undecayed, sorted."""
  flags = jax.tree_util.tree_flatten_with_path(mask)[0]
  return sorted(_path_name(path) for path, decays in flags if not decays)


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
  """What an optimizer was built with, kept beside it so reports read the configured values."""
  learning_rate: Union[float, Schedule]
  weight_decay: Optional[float] = None
  b1: Optional[float] = None
  b2: Optional[float] = None
  eps: Optional[float] = None
  grad_clip_norm: Optional[float] = None
  decay_mask: Optional[Callable[[PyTree], PyTree]] = None


@dataclasses.dataclass(frozen=True)
class OptaxOptimizer:
  """An optax transformation and its hyperparameters: `model.optimizer_def` without t5x
  (with t5x it is t5x's `OptaxWrapper`, which holds the transformation the same way)."""
  optax_optimizer: optax.GradientTransformation
  hyperparameters: Hyperparameters


def _with_clipping(tx: optax.GradientTransformation, grad_clip_norm: Optional[float]
                   ) -> optax.GradientTransformation:
  if grad_clip_norm is None or grad_clip_norm <= 0:
    return tx
  return optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)


def wrap(tx: optax.GradientTransformation, hyperparameters: Hyperparameters) -> Any:
  """`tx` as `model.optimizer_def`: t5x's `OptaxWrapper` (what `t5x.train` expects) under upstream
  t5x's programs, else an `OptaxOptimizer`; either carries `hyperparameters`."""
  optax_wrapper = t5x_interop.upstream("optimizers", "OptaxWrapper")
  if optax_wrapper is None:
    return OptaxOptimizer(tx, hyperparameters)
  wrapper = optax_wrapper(tx)
  # Not t5x's `hyper_params`: t5x passes those into apply_gradient and replaces them.
  wrapper.hyperparameters = hyperparameters
  return wrapper


def unwrap(optimizer_def: Any) -> optax.GradientTransformation:
  """The optax transformation inside whatever `optimizers.adamw()`/`amos()` returned."""
  if optimizer_def is None:
    raise ValueError("the model has no optimizer: bind OPTIMIZER (e.g. OPTIMIZER = "
                     "@optimizers.adamw()); FLIP's run files do")
  if isinstance(optimizer_def, optax.GradientTransformation):
    return optimizer_def
  inner = getattr(optimizer_def, "optax_optimizer", None)
  if isinstance(inner, optax.GradientTransformation):
    return inner
  raise TypeError(f"unsupported optimizer {type(optimizer_def).__name__}: use "
                  "flip_t5x.runtime.optimizers.adamw() or amos()")


def hyperparameters(optimizer_def: Any) -> Optional[Hyperparameters]:
  """What `optimizers.adamw()`/`amos()` built `optimizer_def` with; None for other optimizers."""
  return getattr(optimizer_def, "hyperparameters", None)


def adamw(learning_rate: Union[float, Schedule] = 1e-3, b1: float = 0.9, b2: float = 0.95,
          eps: float = 1e-8, weight_decay: float = 0.2,
          grad_clip_norm: Optional[float] = None,
          no_decay_patterns: Sequence[str] = NO_DECAY_PATTERNS, decay_min_ndim: int = 0) -> Any:
  """FLIP's AdamW (b1 0.9, b2 0.95, wd 0.2; decay where `weight_decay_mask` says)."""
  patterns = tuple(no_decay_patterns)

  def decay_mask(params: PyTree) -> PyTree:
    return weight_decay_mask(params, patterns, decay_min_ndim)

  tx = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                   mask=decay_mask)
  return wrap(_with_clipping(tx, grad_clip_norm),
              Hyperparameters(learning_rate=learning_rate, weight_decay=weight_decay, b1=b1,
                              b2=b2, eps=eps, grad_clip_norm=grad_clip_norm,
                              decay_mask=decay_mask))


def _fan_in(name: str, shape: Tuple[int, ...]) -> int:
  # DenseGeneral kernels: attention output contracts (heads, kv); every other kernel its first axis.
  if name.endswith("attention/out/kernel"):
    return int(math.prod(shape[:2]))
  return int(shape[0])


def amos_eta(name: Tuple[str, ...], shape: Tuple[int, ...]) -> float:
  """Amos's expected entry scale per variable: 1/sqrt(fan_in) for kernels, 0.02 for embeddings."""
  path = "/".join(name)
  if path.endswith("kernel") and len(shape) >= 2:
    return 1.0 / math.sqrt(_fan_in(path, shape))
  if "embedding" in path or path.endswith("cls"):
    return 0.02
  if path.endswith("scale") or "logit_scale" in path:
    return 1.0
  return 0.5


def amos_shape(name: Tuple[str, ...], shape: Tuple[int, ...]) -> Tuple[int, ...]:
  """Slot shapes: kernels keep one value per output unit (input axes reduced), others scalar."""
  path = "/".join(name)
  if path.endswith("kernel") and len(shape) >= 2:
    n_in = 2 if path.endswith("attention/out/kernel") else 1
    return (1,) * n_in + tuple(shape[n_in:])
  return ()


def _import_amos() -> types.ModuleType:
  """`jestimator.amos`, after restoring the `jax.experimental.pjit.PartitionSpec` alias its PyPI
  release (0.3.3) imports and current jax no longer exports."""
  import jax.experimental.pjit as pjit_module  # pylint: disable=g-import-not-at-top
  if not hasattr(pjit_module, "PartitionSpec"):
    pjit_module.PartitionSpec = jax.sharding.PartitionSpec
  from jestimator import amos as amos_lib  # pylint: disable=g-import-not-at-top
  from jestimator import amos_helper  # noqa: F401  pylint: disable=unused-import
  return amos_lib


def amos(learning_rate: Union[float, Schedule] = 0.01, beta: float = 0.999,
         momentum: Optional[float] = None, clip_value: Optional[float] = None,
         extra_l2: float = 0.0, d_coef: float = 0.25, c_coef: float = 0.25,
         grad_clip_norm: Optional[float] = None) -> Any:
  """jestimator's Amos with FLIP-shaped eta/shape functions (an alternative to AdamW)."""
  amos_lib = _import_amos()
  tx = amos_lib.amos(learning_rate, eta_fn=amos_eta, shape_fn=amos_shape, beta=beta,
                     momentum=momentum, clip_value=clip_value, extra_l2=extra_l2, d_coef=d_coef,
                     c_coef=c_coef)
  return wrap(_with_clipping(tx, grad_clip_norm),
              Hyperparameters(learning_rate=learning_rate, grad_clip_norm=grad_clip_norm))
