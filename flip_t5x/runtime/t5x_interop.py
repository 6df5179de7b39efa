"""Upstream t5x, in one place: whether it is importable, and which object each t5x name means.

flip_t5x never needs t5x, but its gin files also drive upstream `t5x.train` / `t5x.eval`. They
import this project's modules under t5x's names (`from flip_t5x.runtime import partitioning,
utils, trainer`) and bind `partitioning.PjitPartitioner`, `utils.DatasetConfig`,
`utils.SaveCheckpointConfig`, `utils.RestoreCheckpointConfig`, `utils.CheckpointConfig` and
`trainer.Trainer`. Gin's dynamic registration resolves each selector as an attribute of the
imported module when it parses the file (`getattr(flip_t5x.runtime.utils, "DatasetConfig")`) and
registers whatever object it finds under that name; under upstream t5x that object must be t5x's
own class, which t5x.train builds, checks and calls. So those modules define only FLIP's classes,
under their own names (`LocalPjitPartitioner`, `FlipDatasetConfig`, ..., `FlipTrainer`), and
answer t5x's names through a module `__getattr__` made here (`t5x_names`).

t5x's objects answer only under upstream t5x's own programs: flip_t5x's binaries call
`use_flip_classes()` before parsing gin files, so `python -m flip_t5x.train` builds the same
FlipTrainer, with the same `trainer.Trainer.*` bindings and the same metrics, whether or not t5x is
installed. The container of `model.optimizer_def` asks the same question (`upstream`).

This module imports no other FLIP module: what the upstream side needs of FLIP's code (the
partitioner's methods, the input pipeline t5x.train reads) the modules that declare their names
hand it in.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Mapping, Optional

try:  # not on PyPI: present only where a user installed it (scripts/check_t5x_parity.sh)
  from t5x import optimizers as t5x_optimizers  # pylint: disable=g-import-not-at-top
  from t5x import partitioning as t5x_partitioning  # pylint: disable=g-import-not-at-top
  from t5x import trainer as t5x_trainer  # pylint: disable=g-import-not-at-top
  from t5x import utils as t5x_utils  # pylint: disable=g-import-not-at-top
  T5X_AVAILABLE = True
  # t5x's modules by the name of the flip_t5x.runtime module that answers their names.
  _T5X_MODULES: Dict[str, Any] = {"optimizers": t5x_optimizers,
                                  "partitioning": t5x_partitioning,
                                  "trainer": t5x_trainer, "utils": t5x_utils}
except ImportError:  # the normal case on a PyPI-only install
  T5X_AVAILABLE = False
  _T5X_MODULES = {}


_flip_classes = False  # set by flip_t5x's binaries (use_flip_classes)


def use_flip_classes() -> None:
  """This program is flip_t5x's: t5x's gin names mean FLIP's classes even where t5x imports.

  flip_t5x's binaries parse gin files through `gin_utils.parse_gin_flags`, which calls it first:
  they configure and run the same objects (trainer and its bindings, partitioner, configs,
  optimizer container, input pipeline) with or without t5x.
  """
  global _flip_classes
  _flip_classes = True


def upstream_classes() -> bool:
  """Whether t5x's gin names mean upstream t5x's classes: t5x imports and this is its program."""
  return T5X_AVAILABLE and not _flip_classes


def upstream(module: str, name: str) -> Optional[Any]:
  """Upstream t5x's `t5x.<module>.<name>` under t5x's programs, else None (FLIP's is meant)."""
  return getattr(_T5X_MODULES[module], name) if upstream_classes() else None


@functools.lru_cache(maxsize=None)
def _extended(methods: type, module: str, name: str) -> type:
  """t5x's class `name` with FLIP's `methods` first in its MRO (one class per pair, as gin needs
  the same object each time it resolves the name)."""
  base = getattr(_T5X_MODULES[module], name)
  return type(f"Upstream{name}", (methods, base),
              {"__module__": __name__, "__doc__": f"t5x's {name} with {methods.__name__}."})


def t5x_names(module: str, ours: Mapping[str, Any], *,
              replacements: Optional[Mapping[str, Any]] = None,
              extensions: Optional[Mapping[str, type]] = None) -> Callable[[str], Any]:
  """A module `__getattr__` for `module` (a `flip_t5x.runtime.<name>` with a t5x namesake).

  Args:
    module: the declaring module's `__name__`.
    ours: t5x's name -> FLIP's object, what flip_t5x's programs (and installs without t5x) get.
      Under t5x's programs a name means t5x's own `t5x.<module>.<name>`, or what one of these says:
    replacements: t5x's name -> FLIP's object with t5x's signature that t5x's programs get instead;
    extensions: t5x's name -> FLIP's mixin class: t5x's class with it first in the MRO.

  Returns:
    The `__getattr__`: it raises AttributeError for any other name, as a module does.
  """
  replacements = dict(replacements or {})
  extensions = dict(extensions or {})
  if not set(replacements) | set(extensions) <= set(ours) or set(replacements) & set(extensions):
    raise ValueError(f"t5x_names({module!r}): replacements and extensions must name distinct "
                     f"names among {sorted(ours)}")
  short = module.rpartition(".")[2]

  def getattr_(name: str) -> Any:
    if name not in ours:
      raise AttributeError(f"module {module!r} has no attribute {name!r}")
    if not upstream_classes():
      return ours[name]
    if name in replacements:
      return replacements[name]
    if name in extensions:
      return _extended(extensions[name], short, name)
    return upstream(short, name)

  return getattr_
