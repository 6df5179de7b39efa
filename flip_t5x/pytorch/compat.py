"""Where installed third-party releases do not fit together: torchvision, CLIP_benchmark.

PyPI's x86-64 torchvision wheels are built against CUDA torch; beside a CPU build of torch (what
the test environment installs: scripts/test.sh) their compiled operators do not load, and
`import torchvision` then fails registering fake kernels for them ("operator torchvision::nms
does not exist"). flip_t5x needs only torchvision's Python transforms (and CLIP_benchmark its
datasets), none of the compiled operators: where the import fails that way, it is retried
without the fake-kernel module. A torchvision that imports is left as it is.

CLIP_benchmark 1.6.2 (the latest release) computes top-k accuracy with `float()` of a one-element
array, which numpy 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars",
LAION-AI/CLIP_benchmark#147, open): where its `accuracy` fails that way, the same count is taken
as a scalar.
"""
from __future__ import annotations

import sys
import types

_META = "torchvision._meta_registrations"


def import_torchvision() -> types.ModuleType:
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
    return torchvision
  except RuntimeError as e:
    if "torchvision::" not in str(e):
      raise
  for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
    del sys.modules[name]
  sys.modules[_META] = types.ModuleType(_META)
  import torchvision  # pylint: disable=g-import-not-at-top,reimported
  return torchvision


def fix_clip_benchmark_accuracy() -> None:
  import torch  # pylint: disable=g-import-not-at-top
  from clip_benchmark.metrics import zeroshot_classification  # pylint: disable=g-import-not-at-top
  try:
    zeroshot_classification.accuracy(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    return
  except TypeError:
    pass

  def accuracy(output, target, topk=(1,)):
    """CLIP_benchmark's top-k accuracy (fractions, in `topk`'s order), counted as scalars."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]

  zeroshot_classification.accuracy = accuracy
