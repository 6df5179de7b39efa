"""FLIP's optimizers and learning-rate schedule, as gin-configurable optax transformations.

Gin files bind `OPTIMIZER = @optimizers.adamw()` (or `@optimizers.amos()`), and
`LEARNING_RATE = @optimizers.warmup_cosine_schedule()` for both the optimizer and the trainer's
learning-rate summary. When upstream t5x is importable the optimizers come wrapped in
`t5x.optimizers.OptaxWrapper`, which is what `t5x.train` expects of `model.optimizer_def`;
`unwrap` returns the optax transformation either way.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import optax

from flip_t5x import compat

PyTree = Any
Schedule = Callable[[Any], Any]

IMAGENET_EPOCH_SAMPLES = 1_281_167
BASE_BATCH_SIZE = 256

# Parameters exempt from weight decay whatever their rank: biases (attention biases are 2-D
# [heads, head_dim]) and position embeddings (FLIP/MAE).
NO_DECAY_PATTERNS = (r"(^|/)bias$", r"pos_embed")


def _number(value: Any, name: str) -> Optional[float]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"warmup_cosine_schedule.{name} must be a number, got {value!r} "
                    f"({type(value).__name__}); check the macro bound to it (e.g. TRAIN_STEPS)")
  return float(value)


def _steps(steps: Optional[float], epochs: Optional[float], batch_size: int, what: str) -> float:
  steps, epochs = _number(steps, f"{what}_steps"), _number(epochs, f"{what}_epochs")
  if (steps is None) == (epochs is None):
    raise ValueError(f"give exactly one of {what}_steps and {what}_epochs "
                     f"(got {what}_steps={steps}, {what}_epochs={epochs})")
  if steps is not None:
    return float(steps)
  return float(epochs) * IMAGENET_EPOCH_SAMPLES / float(batch_size)


def peak_learning_rate(base_learning_rate: float, batch_size: int,
                       base_batch_size: int = BASE_BATCH_SIZE) -> float:
  """FLIP's linear scaling rule: lr = base_lr x batch / 256."""
  return float(base_learning_rate) * float(batch_size) / float(base_batch_size)


def warmup_cosine_schedule(base_learning_rate: float, batch_size: int,
                           total_steps: Optional[float] = None,
                           total_epochs: Optional[float] = None,
                           warmup_steps: Optional[float] = None,
                           warmup_epochs: Optional[float] = None,
                           base_batch_size: int = BASE_BATCH_SIZE,
                           end_learning_rate: float = 0.0) -> Schedule:
  """Linear warmup from 0 to base_lr x batch/256, then half-cosine to `end_learning_rate`.

  Lengths are in steps or in "ImageNet epochs" (1,281,167 samples each, converted with the batch
  size), as FLIP states them. Step `s` uses the rate of s (the first step trains at 0 only when
  warmup is on, as in MAE's per-iteration schedule, which starts at 0).
  """
  _number(base_learning_rate, "base_learning_rate")
  _number(batch_size, "batch_size")
  peak = peak_learning_rate(base_learning_rate, batch_size, base_batch_size)
  total = _steps(total_steps, total_epochs, batch_size, "total")
  warmup = (0.0 if warmup_steps is None and warmup_epochs is None
            else _steps(warmup_steps, warmup_epochs, batch_size, "warmup"))
  if warmup > total:
    raise ValueError(f"warmup ({warmup:.1f} steps) is longer than training ({total:.1f} steps)")
  end = float(end_learning_rate)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup, 1.0)
    progress = jnp.clip((step - warmup) / max(total - warmup, 1.0), 0.0, 1.0)
    cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step < warmup, warm, cosine)

  return schedule


def _path_name(path: Tuple[Any, ...]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def weight_decay_mask(params: PyTree,
                      no_decay_patterns: Sequence[str] = NO_DECAY_PATTERNS) -> PyTree:
  """True where FLIP decays: kernels and the token embedding (ndim >= 2, not a bias, not a
  position embedding). LayerNorm scales, the CLS token and `logit_scale` are 1-D or scalars.

  The mask has the container types of `params` (t5x's OptaxWrapper passes a FrozenDict).
  """
  def decays(path, leaf):
    name = _path_name(path)
    return len(leaf.shape) >= 2 and not any(re.search(p, name) for p in no_decay_patterns)

  return jax.tree_util.tree_map_with_path(decays, params)


def _with_clipping(tx: optax.GradientTransformation, grad_clip_norm: Optional[float]
                   ) -> optax.GradientTransformation:
  if grad_clip_norm is None or grad_clip_norm <= 0:
    return tx
  return optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)


def wrap(tx: optax.GradientTransformation) -> Any:
  """t5x's `OptaxWrapper` around `tx` when upstream t5x is installed, else `tx` itself."""
  if compat.T5X_AVAILABLE:
    from t5x import optimizers as t5x_optimizers  # pylint: disable=g-import-not-at-top
    return t5x_optimizers.OptaxWrapper(tx)
  return tx


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


def adamw(learning_rate: Union[float, Schedule] = 1e-3, b1: float = 0.9, b2: float = 0.95,
          eps: float = 1e-8, weight_decay: float = 0.2,
          grad_clip_norm: Optional[float] = None,
          no_decay_patterns: Sequence[str] = NO_DECAY_PATTERNS) -> Any:
  """FLIP's AdamW (b1 0.9, b2 0.95, wd 0.2; decay only on matrices, see `weight_decay_mask`)."""
  patterns = tuple(no_decay_patterns)
  tx = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                   mask=lambda p: weight_decay_mask(p, patterns))
  return wrap(_with_clipping(tx, grad_clip_norm))


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


def amos(learning_rate: Union[float, Schedule] = 0.01, beta: float = 0.999,
         momentum: Optional[float] = None, clip_value: Optional[float] = None,
         extra_l2: float = 0.0, d_coef: float = 0.25, c_coef: float = 0.25,
         grad_clip_norm: Optional[float] = None) -> Any:
  """jestimator's Amos with FLIP-shaped eta/shape functions (an alternative to AdamW)."""
  amos_lib = compat.import_amos()
  tx = amos_lib.amos(learning_rate, eta_fn=amos_eta, shape_fn=amos_shape, beta=beta,
                     momentum=momentum, clip_value=clip_value, extra_l2=extra_l2, d_coef=d_coef,
                     c_coef=c_coef)
  return wrap(_with_clipping(tx, grad_clip_norm))
